"""Maps PyTorch state dicts of the published SE models onto our layers.

The published checkpoints (Cadene's ports of the authors' Caffe models and
timm's ``legacy_*`` models) share one layout: ``layer0`` is the stem,
``layer1`` .. ``layer4`` the stages, ``se_module.fc1`` / ``fc2`` the SE
block's 1x1 convolutions, ``last_linear`` the classifier. `senet_torch_name`
is the one place that knows how our layer names translate to theirs; the
rest is generic: every weight-carrying layer of the Keras model is looked up,
shape-checked and assigned, and anything missing, misshapen or left over is
reported by name.
"""

import logging
import re

import keras
import numpy as np

from keras_senet.layers import SqueezeExcite

logger = logging.getLogger(__name__)

# State-dict entries that carry no weights of ours.
IGNORED_SUFFIXES = (".num_batches_tracked",)
HEAD_LAYER = "logits"
TORCH_HEAD = "last_linear"


class ConversionError(ValueError):
    """A state dict does not fit the model; the message lists every problem."""


_STAGE_RULES = [
    (re.compile(r"^conv1_conv$"), lambda m: "layer0.conv1"),
    (re.compile(r"^conv1_bn$"), lambda m: "layer0.bn1"),
    (re.compile(r"^conv1_(\d)_conv$"), lambda m: f"layer0.conv{m[1]}"),
    (re.compile(r"^conv1_(\d)_bn$"), lambda m: f"layer0.bn{m[1]}"),
    (
        re.compile(r"^conv(\d)_block(\d+)_0_conv$"),
        lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.downsample.0",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_0_bn$"),
        lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.downsample.1",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_(\d)_conv$"),
        lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.conv{m[3]}",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_(\d)_bn$"),
        lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.bn{m[3]}",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_se$"),
        lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.se_module",
    ),
    (re.compile(rf"^{HEAD_LAYER}$"), lambda m: TORCH_HEAD),
]


def senet_torch_name(layer_name):
    """The PyTorch module path of one of our SE-ResNet/ResNeXt/SENet layers."""
    for pattern, rule in _STAGE_RULES:
        match = pattern.match(layer_name)
        if match:
            return rule(match)
    return None


def _conv_kernel(w):
    # PyTorch (out, in / groups, kh, kw) -> Keras (kh, kw, in / groups, out).
    return np.transpose(w, (2, 3, 1, 0))


def _fc_kernel(w):
    # A 1x1 convolution (out, in, 1, 1) or a Linear (out, in) -> (in, out).
    return np.transpose(w.reshape(w.shape[0], -1))


def _layer_targets(layer, prefix):
    """(variable, torch key, transform) for each variable of ``layer``."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [
            (layer.gamma, prefix + ".weight", None),
            (layer.beta, prefix + ".bias", None),
            (layer.moving_mean, prefix + ".running_mean", None),
            (layer.moving_variance, prefix + ".running_var", None),
        ]
    if isinstance(layer, SqueezeExcite):
        targets = []
        for fc in ("fc1", "fc2"):
            dense = getattr(layer, fc)
            targets.append((dense.kernel, f"{prefix}.{fc}.weight", _fc_kernel))
            if dense.use_bias:
                targets.append((dense.bias, f"{prefix}.{fc}.bias", None))
        return targets
    if isinstance(layer, keras.layers.Dense):
        targets = [(layer.kernel, prefix + ".weight", _fc_kernel)]
        if layer.use_bias:
            targets.append((layer.bias, prefix + ".bias", None))
        return targets
    if isinstance(layer, keras.layers.Conv2D):
        targets = [(layer.kernel, prefix + ".weight", _conv_kernel)]
        if layer.use_bias:
            targets.append((layer.bias, prefix + ".bias", None))
        return targets
    raise ConversionError(
        f"Don't know how to load layer {layer.name!r} "
        f"({type(layer).__name__})."
    )


def plan(model, state_dict, torch_name=senet_torch_name):
    """Pairs every weight of ``model`` with its state-dict tensor.

    Returns ``(assignments, skipped)``: a list of ``(variable, array)`` ready
    to assign, and the state-dict keys deliberately left unused (the
    classifier when the model has none or a different number of classes).
    Raises `ConversionError` listing every missing, misshapen, unmapped or
    unexpected tensor.
    """
    problems = []
    assignments = []
    used = set()
    has_head = False
    head_mismatch = False
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = torch_name(layer.name)
        if prefix is None:
            problems.append(f"layer {layer.name!r} has no counterpart")
            continue
        for variable, key, transform in _layer_targets(layer, prefix):
            if key not in state_dict:
                problems.append(f"missing {key!r} (for {variable.path})")
                continue
            value = np.asarray(state_dict[key])
            if transform is not None:
                value = transform(value)
            if prefix == TORCH_HEAD:
                has_head = True
                if tuple(value.shape) != tuple(variable.shape):
                    head_mismatch = True
                    continue
            elif tuple(value.shape) != tuple(variable.shape):
                problems.append(
                    f"{key!r} has shape {tuple(value.shape)} after "
                    f"conversion; {variable.path} needs {tuple(variable.shape)}"
                )
                continue
            used.add(key)
            assignments.append((variable, value))
    head_keys = {k for k in state_dict if k.startswith(TORCH_HEAD + ".")}
    unexpected = sorted(
        k
        for k in state_dict
        if k not in used
        and not k.endswith(IGNORED_SUFFIXES)
        and not (k in head_keys and (head_mismatch or not has_head))
    )
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:10])
        more = f" (and {len(unexpected) - 10} more)" if len(unexpected) > 10 else ""
        problems.append(f"unexpected tensors: {shown}{more}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ConversionError(
            f"The checkpoint does not fit model {model.name!r} "
            f"({len(problems)} problems):\n  {shown}{more}"
        )
    skipped = sorted(head_keys - used)
    return assignments, skipped


def load_state_dict_into(model, state_dict, torch_name=senet_torch_name):
    """Assigns a PyTorch state dict (name -> array) to ``model``, strictly.

    Every tensor the model needs must be present with the right shape and
    every tensor present must be used, except the classifier, which is left
    out (with a log line) when the model has no head or another number of
    classes. Returns the list of state-dict keys left out.
    """
    assignments, skipped = plan(model, state_dict, torch_name)
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    if skipped:
        logger.info(
            "Loaded the backbone of %s; the classifier (%s) was not loaded: "
            "the model has %s.",
            model.name,
            ", ".join(skipped),
            "no classification head"
            if not any(l.name == HEAD_LAYER for l in model.layers)
            else "a classification head of another size",
        )
    return skipped
