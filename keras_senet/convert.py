"""Maps PyTorch state dicts of SE models onto our layers.

Two state-dict layouts exist for our SE-ResNet/ResNeXt models (`LAYOUTS`):

- ``"legacy"``: Cadene's ports of the authors' Caffe models and timm's
  ``legacy_*`` models: ``layer0`` is the stem, ``layer1`` .. ``layer4`` the
  stages, ``se_module.fc1`` / ``fc2`` the SE block's 1x1 convolutions,
  ``last_linear`` the classifier (`senet_torch_name`);
- ``"timm"``: timm's ``ResNet`` (``seresnet50``, ``seresnext101d_32x8d``,
  ...): ``conv1`` / ``bn1`` the stem (``conv1.0``, ``conv1.3``, ``conv1.6``
  for a deep stem), ``layer1`` .. ``layer4``, ``se.fc1`` / ``fc2``,
  ``downsample.0/1`` (``.1/.2`` after an average pool), ``fc``
  (`timm_resnet_torch_name`).

Each variant records its layout (`keras_senet.models.senet.VARIANTS`,
`layout_of`). The layout functions are the one place that knows how our
layer names translate to theirs; the rest is generic: `plan` pairs every
weight-carrying layer of the Keras model with a state-dict key from the
keys and shapes alone (no tensor data), checks the shapes after conversion
and reports anything missing, misshapen or left over by name;
`load_state_dict_into` then assigns the arrays.
"""

import logging
import math
import re

import keras
import numpy as np

from keras_senet.layers import SqueezeExcite

logger = logging.getLogger(__name__)

# State-dict entries that carry no weights of ours.
IGNORED_SUFFIXES = (".num_batches_tracked",)
HEAD_LAYER = "logits"
TORCH_HEAD = "last_linear"  # the legacy layout's classifier


class ConversionError(ValueError):
    """A state dict does not fit the model; the message lists every problem."""


def _block(m):
    return f"layer{int(m[1]) - 1}.{int(m[2]) - 1}"


def _match(rules, layer_name, avg_down):
    for pattern, rule in rules:
        match = pattern.match(layer_name)
        if match:
            return rule(match, avg_down)
    return None


_LEGACY_RULES = [
    (re.compile(r"^conv1_conv$"), lambda m, a: "layer0.conv1"),
    (re.compile(r"^conv1_bn$"), lambda m, a: "layer0.bn1"),
    (re.compile(r"^conv1_(\d)_conv$"), lambda m, a: f"layer0.conv{m[1]}"),
    (re.compile(r"^conv1_(\d)_bn$"), lambda m, a: f"layer0.bn{m[1]}"),
    (
        re.compile(r"^conv(\d)_block(\d+)_0_conv$"),
        lambda m, a: f"{_block(m)}.downsample.0",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_0_bn$"),
        lambda m, a: f"{_block(m)}.downsample.1",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_(\d)_conv$"),
        lambda m, a: f"{_block(m)}.conv{m[3]}",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_(\d)_bn$"),
        lambda m, a: f"{_block(m)}.bn{m[3]}",
    ),
    (re.compile(r"^conv(\d)_block(\d+)_se$"), lambda m, a: f"{_block(m)}.se_module"),
    (re.compile(rf"^{HEAD_LAYER}$"), lambda m, a: TORCH_HEAD),
]


def senet_torch_name(layer_name, avg_down=False):
    """The "legacy" layout: the PyTorch module path of one of our layers in
    the released SE-ResNet/ResNeXt/SENet checkpoints (None if it has none).

    ``avg_down`` is accepted for the common signature of `LAYOUTS`; the
    released models have no average-pool shortcuts.
    """
    return _match(_LEGACY_RULES, layer_name, avg_down)


# timm's deep stem is one nn.Sequential: conv, bn, act, conv, bn, act, conv;
# the BN after its third convolution is the model's `bn1`.
_TIMM_STEM_CONV = {"1": "conv1.0", "2": "conv1.3", "3": "conv1.6"}
_TIMM_STEM_BN = {"1": "conv1.1", "2": "conv1.4", "3": "bn1"}
# With avg_down a shortcut is nn.Sequential(pool, conv, bn), else (conv, bn).
_TIMM_RULES = [
    (re.compile(r"^conv1_conv$"), lambda m, a: "conv1"),
    (re.compile(r"^conv1_bn$"), lambda m, a: "bn1"),
    (re.compile(r"^conv1_([123])_conv$"), lambda m, a: _TIMM_STEM_CONV[m[1]]),
    (re.compile(r"^conv1_([123])_bn$"), lambda m, a: _TIMM_STEM_BN[m[1]]),
    (
        re.compile(r"^conv(\d)_block(\d+)_0_conv$"),
        lambda m, a: f"{_block(m)}.downsample.{1 if a else 0}",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_0_bn$"),
        lambda m, a: f"{_block(m)}.downsample.{2 if a else 1}",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_(\d)_conv$"),
        lambda m, a: f"{_block(m)}.conv{m[3]}",
    ),
    (
        re.compile(r"^conv(\d)_block(\d+)_(\d)_bn$"),
        lambda m, a: f"{_block(m)}.bn{m[3]}",
    ),
    (re.compile(r"^conv(\d)_block(\d+)_se$"), lambda m, a: f"{_block(m)}.se"),
    (re.compile(rf"^{HEAD_LAYER}$"), lambda m, a: "fc"),
]


def timm_resnet_torch_name(layer_name, avg_down=False):
    """The "timm" layout: the PyTorch module path of one of our layers in
    timm's ``ResNet`` (None if it has none).

    ``avg_down``: whether the model's projection shortcuts start with an
    average pool (timm's ``avg_down``; an ``nn.Identity`` where the stride
    is 1): their convolution and BN are then ``downsample.1`` / ``.2``.
    """
    return _match(_TIMM_RULES, layer_name, avg_down)


LAYOUTS = {"legacy": senet_torch_name, "timm": timm_resnet_torch_name}
LAYOUT_DESCRIPTIONS = {
    "legacy": "Cadene's ports and timm's legacy_* models: layer0, "
    "layerN.M.se_module, last_linear",
    "timm": "timm's ResNet: conv1, bn1, layerN.M.se.fc1/fc2, fc",
}
# Key patterns that only one layout's checkpoints have.
_LAYOUT_SIGNS = {
    "legacy": re.compile(r"^(layer0\.|last_linear\.)|\.se_module\."),
    "timm": re.compile(r"^(conv1\.|bn1\.|fc\.)|\.se\.fc[12]\."),
}
_SHORTCUT_POOL = re.compile(r"^conv\d_block\d+_0_pool$")


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(
            f"`layout` must be one of {sorted(LAYOUTS)}. Received: layout={layout!r}"
        )
    return layout


def layout_of(model_id):
    """The state-dict layout of the checkpoints of model ``model_id`` (a
    registry name of the SE-ResNet/ResNeXt family): ``"legacy"`` or
    ``"timm"``. Recorded per variant in ``senet.VARIANTS``."""
    from keras_senet.models import senet

    return senet.layout_of(model_id)


def models_with_layout(layout):
    """The registry names whose checkpoints use ``layout``, sorted."""
    from keras_senet.models import senet

    _check_layout(layout)
    return sorted(n for n in senet.VARIANTS if senet.layout_of(n) == layout)


def model_layout(model):
    """The layout of ``model``: that of the variant it was built as (found by
    its name), ``"legacy"`` for a model of another name."""
    from keras_senet.models import senet

    if model.name in senet.VARIANTS:
        return senet.layout_of(model.name)
    return "legacy"


def guess_layout(keys):
    """The layout whose distinctive names ``keys`` (state-dict keys) carry,
    or None when none or both do."""
    found = [
        layout
        for layout, sign in _LAYOUT_SIGNS.items()
        if any(sign.search(k) for k in keys)
    ]
    return found[0] if len(found) == 1 else None


# --- Tensor conversions ------------------------------------------------------


class Transform:
    """How one state-dict tensor becomes one of our variables.

    ``transform(array)`` converts the data; ``transform.shape(shape)`` gives
    the converted shape from the stored one alone (None when the stored
    shape cannot be converted this way), so a checkpoint can be checked
    before any tensor data is read.
    """

    def __init__(self, name, convert, shape):
        self.name = name
        self._convert = convert
        self._shape = shape

    def __call__(self, array):
        return self._convert(np.asarray(array))

    def shape(self, shape):
        result = self._shape(tuple(int(d) for d in shape))
        return None if result is None else tuple(result)

    def __repr__(self):
        return f"Transform({self.name})"


IDENTITY = Transform("identity", lambda a: a, lambda s: s)
# PyTorch (out, in / groups, kh, kw) -> Keras (kh, kw, in / groups, out).
CONV_KERNEL = Transform(
    "conv_kernel",
    lambda w: np.transpose(w, (2, 3, 1, 0)),
    lambda s: (s[2], s[3], s[1], s[0]) if len(s) == 4 else None,
)
# A 1x1 convolution (out, in, 1, 1) or a Linear (out, in) -> (in, out).
FC_KERNEL = Transform(
    "fc_kernel",
    lambda w: np.transpose(w.reshape(w.shape[0], -1)),
    lambda s: (s[1], s[0])
    if len(s) == 2 or (len(s) == 4 and s[2:] == (1, 1))
    else None,
)


def adapt_input_conv(kernel, in_channels):
    """A pretrained input convolution's kernel for ``in_channels`` inputs.

    timm's rule (``timm.models.adapt_input_conv``), on a Keras kernel
    ``(kh, kw, C, out)`` pretrained on ``C`` (3, RGB) channels: one channel
    sums the C kernels (a grey image through the RGB filters); any other
    count repeats the C kernels cyclically up to ``in_channels`` and scales
    them by ``C / in_channels``, so that the response to a constant input
    keeps its size. Computed in float32, returned in the kernel's dtype.
    """
    if (
        isinstance(in_channels, bool)
        or not isinstance(in_channels, (int, np.integer))
        or in_channels < 1
    ):
        raise ValueError(
            "`in_channels` must be a positive integer. "
            f"Received: in_channels={in_channels!r}"
        )
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        raise ValueError(
            "`kernel` must be a 4D convolution kernel (kh, kw, in, out). "
            f"Received: kernel.shape={kernel.shape}"
        )
    base = kernel.shape[2]
    if in_channels == base:
        return kernel
    work = kernel.astype("float32")
    if in_channels == 1:
        work = work.sum(axis=2, keepdims=True)
    else:
        repeat = math.ceil(in_channels / base)
        work = np.tile(work, (1, 1, repeat, 1))[:, :, :in_channels, :]
        work = work * (base / float(in_channels))
    return work.astype(kernel.dtype)


def _adapted_conv_kernel(in_channels):
    return Transform(
        f"conv_kernel+adapt_input_conv({in_channels})",
        lambda w: adapt_input_conv(CONV_KERNEL(w), in_channels),
        lambda s: (s[2], s[3], in_channels, s[0]) if len(s) == 4 else None,
    )


def _layer_targets(layer, prefix):
    """(variable, torch key, transform) for each variable of ``layer``."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [
            (layer.gamma, prefix + ".weight", IDENTITY),
            (layer.beta, prefix + ".bias", IDENTITY),
            (layer.moving_mean, prefix + ".running_mean", IDENTITY),
            (layer.moving_variance, prefix + ".running_var", IDENTITY),
        ]
    if isinstance(layer, SqueezeExcite):
        targets = []
        for fc in ("fc1", "fc2"):
            dense = getattr(layer, fc)
            targets.append((dense.kernel, f"{prefix}.{fc}.weight", FC_KERNEL))
            if dense.use_bias:
                targets.append((dense.bias, f"{prefix}.{fc}.bias", IDENTITY))
        return targets
    if isinstance(layer, keras.layers.Dense):
        targets = [(layer.kernel, prefix + ".weight", FC_KERNEL)]
        if layer.use_bias:
            targets.append((layer.bias, prefix + ".bias", IDENTITY))
        return targets
    if isinstance(layer, keras.layers.Conv2D):
        targets = [(layer.kernel, prefix + ".weight", CONV_KERNEL)]
        if layer.use_bias:
            targets.append((layer.bias, prefix + ".bias", IDENTITY))
        return targets
    raise ConversionError(
        f"Don't know how to load layer {layer.name!r} "
        f"({type(layer).__name__})."
    )


def input_convolutions(model):
    """Names of the Conv2D layers that read the model's input directly (or
    through ZeroPadding2D only): the convolutions whose kernels depend on
    the number of input channels."""
    producers = {}
    for layer in model.layers:
        try:
            producers[id(layer.output)] = layer
        except (AttributeError, ValueError):  # a layer used more than once
            continue
    inputs = {id(t) for t in model.inputs}
    found = set()
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        try:
            tensor = layer.input
        except (AttributeError, ValueError):
            continue
        while id(tensor) not in inputs:
            producer = producers.get(id(tensor))
            if not isinstance(producer, keras.layers.ZeroPadding2D):
                break
            tensor = producer.input
        if id(tensor) in inputs:
            found.add(layer.name)
    return found


def _channels_in(layer):
    """The input channels a Conv2D layer's kernel expects (all groups)."""
    return int(layer.kernel.shape[2]) * int(getattr(layer, "groups", 1) or 1)


def _layout_hint(keys, layout, model):
    guessed = guess_layout(keys)
    if guessed is None or guessed == layout:
        return ""
    lines = [
        f"The checkpoint looks like a {guessed!r}-layout file "
        f"({LAYOUT_DESCRIPTIONS[guessed]}), but model {model.name!r} loads "
        f"the {layout!r} layout ({LAYOUT_DESCRIPTIONS[layout]})."
    ]
    for name in sorted(LAYOUTS):
        lines.append(
            f"Layout {name!r} is used by: {', '.join(models_with_layout(name))}."
        )
    lines.append(
        f"Load it into a model of the {guessed!r} layout: the two families "
        "differ in architecture (stride placement, stem), even where their "
        "tensor shapes agree."
    )
    return "\n".join(lines) + "\n"


def _shape_of(value):
    """A shape tuple, or the shape of an array (NumPy, torch, ...)."""
    if isinstance(value, (tuple, list)):
        shape = value
    else:
        shape = getattr(value, "shape", None)
        if shape is None:
            shape = np.shape(value)
    return tuple(int(d) for d in shape)


def plan(model, shapes, layout=None):
    """Pairs every weight of ``model`` with its state-dict entry, from the
    keys and shapes alone (no tensor data is needed).

    Args:
        model: one of our SE-ResNet/ResNeXt models.
        shapes: ``{state-dict key: shape tuple}`` (or a state dict of
            arrays: only their shapes are read).
        layout: the checkpoint's layout, a key of `LAYOUTS`; None: the
            layout of the variant ``model`` was built as (`model_layout`).

    Returns:
        ``(assignments, skipped)``: ``assignments`` a list of
        ``(variable, key, transform)``, where ``transform(array)`` (a
        `Transform`) converts the entry for the variable; ``skipped`` the
        state-dict keys deliberately left unused (the classifier when the
        model has none or another number of classes).

    The model's input convolution is adapted to its number of input
    channels with `adapt_input_conv` when the checkpoint's differs (logged).

    Raises:
        ConversionError: listing every missing, misshapen, unmapped or
            unexpected entry, led by a hint when the keys follow another
            layout than ``layout``.
    """
    layout = _check_layout(model_layout(model) if layout is None else layout)
    torch_name = LAYOUTS[layout]
    shapes = {key: _shape_of(value) for key, value in shapes.items()}
    avg_down = any(_SHORTCUT_POOL.match(layer.name) for layer in model.layers)
    head_prefix = torch_name(HEAD_LAYER)
    first_convs = input_convolutions(model)
    problems = []
    assignments = []
    adapted = []
    used = set()
    has_head = False
    head_mismatch = False
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = torch_name(layer.name, avg_down=avg_down)
        if prefix is None:
            problems.append(f"layer {layer.name!r} has no counterpart")
            continue
        for variable, key, transform in _layer_targets(layer, prefix):
            if key not in shapes:
                problems.append(f"missing {key!r} (for {variable.path})")
                continue
            stored = shapes[key]
            if (
                layer.name in first_convs
                and variable is layer.kernel
                and len(stored) == 4
                and getattr(layer, "groups", 1) == 1
                and stored[1] != _channels_in(layer)
            ):
                transform = _adapted_conv_kernel(_channels_in(layer))
                adapted.append((layer.name, stored[1], _channels_in(layer)))
            converted = transform.shape(stored)
            if prefix == head_prefix:
                has_head = True
                if converted != tuple(variable.shape):
                    head_mismatch = True
                    continue
            elif converted != tuple(variable.shape):
                problems.append(
                    f"{key!r} has shape {stored}"
                    + ("" if converted is None or converted == stored
                       else f" ({converted} converted)")
                    + f"; {variable.path} needs {tuple(variable.shape)}"
                )
                continue
            used.add(key)
            assignments.append((variable, key, transform))
    head_keys = {k for k in shapes if k.startswith(head_prefix + ".")}
    unexpected = sorted(
        k
        for k in shapes
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
            f"({len(problems)} problems; {layout!r} layout):\n"
            f"{_layout_hint(shapes, layout, model)}  {shown}{more}"
        )
    for name, stored_in, model_in in adapted:
        logger.info(
            "Adapted the input convolution %s of %s from %d to %d input "
            "channels (timm's adapt_input_conv rule).",
            name,
            model.name,
            stored_in,
            model_in,
        )
    skipped = sorted(head_keys - used)
    return assignments, skipped


def load_state_dict_into(model, state_dict, layout=None):
    """Assigns a PyTorch state dict (name -> array) to ``model``, strictly.

    Every tensor the model needs must be present with the right shape and
    every tensor present must be used, except the classifier, which is left
    out (with a log line) when the model has no head or another number of
    classes. ``layout`` as in `plan`. Returns the list of state-dict keys
    left out.
    """
    shapes = {key: _shape_of(value) for key, value in state_dict.items()}
    assignments, skipped = plan(model, shapes, layout)
    for variable, key, transform in assignments:
        variable.assign(transform(state_dict[key]).astype(variable.dtype))
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
