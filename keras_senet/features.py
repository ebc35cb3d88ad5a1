"""Multi-scale feature maps for detection and segmentation backbones.

`feature_extractor` turns a classifier (a registry name or a functional
Keras model) into a model whose outputs are the feature pyramid levels
``{"C2": ..., "C5": ...}``, level ``Ck`` having stride ``2**k``; this is the
role of timm's ``features_only`` / ``feature_info`` and keras-hub's
``pyramid_outputs``. `feature_info` describes the levels.

The levels are found from the layer graph, not from layer names, so the same
code serves SE-ResNet, SE-ResNeXt, SENet-154, the SE-Inception family and
other functional CNNs (for example `keras.applications.ResNet50`):

- the stride of every 4D tensor is measured by running the graph
  symbolically on a probe input (256x256 unless the model fixes its size),
  rounded to the nearest power of two (networks with "valid" convolutions
  shrink maps by a few pixels);
- a level's feature map is the LAST tensor of that stride that is a cut point
  of the graph: every path from the input to the output runs through it. In a
  residual network these are the block outputs (``conv2_block3_out`` ...),
  never a tensor inside a block or on a shortcut. (Zero-padded copies, the
  input of a strided convolution, are skipped in favour of the map they pad.)
"""

import math
import re

import keras

PROBE_SIZE = 256
_LEVEL = re.compile(r"^C([1-9]\d*)$")


def _level_stride(level):
    match = _LEVEL.match(level) if isinstance(level, str) else None
    if match is None:
        raise ValueError(
            "Feature levels are named 'C<k>' for the feature map of stride "
            f"2**k (e.g. 'C2' ... 'C5'). Received: level={level!r}"
        )
    return 2 ** int(match.group(1))


def _check_levels(levels):
    if isinstance(levels, str) or not levels:
        raise ValueError(
            "`levels` must be a non-empty sequence of level names such as "
            f"('C2', 'C3', 'C4', 'C5'). Received: levels={levels!r}"
        )
    levels = tuple(levels)
    for level in levels:
        _level_stride(level)
    if len(set(levels)) != len(levels):
        raise ValueError(f"`levels` has duplicates. Received: levels={levels!r}")
    return levels


def _as_model(model_or_name, weights, input_shape):
    if isinstance(model_or_name, str):
        from keras_senet.models import create_model

        return create_model(
            model_or_name,
            include_top=False,
            weights=weights,
            input_shape=input_shape,
        )
    if isinstance(model_or_name, keras.Model):
        if weights is not None:
            raise ValueError(
                "`weights` applies when a model name is given; load weights "
                "into a model instance before passing it. "
                f"Received: weights={weights!r} with model "
                f"{model_or_name.name!r}"
            )
        return model_or_name
    raise ValueError(
        "`model_or_name` must be a registered model name (see "
        "keras_senet.list_models()) or a functional keras.Model. "
        f"Received: {model_or_name!r}"
    )


def _flat(value):
    return list(keras.tree.flatten(value))


def _graph(model):
    """Topologically ordered (operation, inputs, outputs) of ``model``."""
    try:
        operations = model.operations
        model_inputs = model.inputs
        model_outputs = _flat(model.outputs)
    except (AttributeError, ValueError):
        operations = model_inputs = None
    if not model_inputs:
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) has no layer "
            "graph to take feature maps from; use a functional model."
        )
    if len(model_inputs) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(model_inputs)} inputs; feature "
            "extraction needs a single image input."
        )
    known = {id(t) for t in model_inputs}
    steps = []
    for op in operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        inputs = [t for t in _flat(op.input) if keras.utils.is_keras_tensor(t)]
        outputs = _flat(op.output)
        if any(id(t) not in known for t in inputs):
            raise ValueError(
                f"Cannot follow the layer graph of model {model.name!r} at "
                f"layer {op.name!r} (a layer used more than once, or a nested "
                "model's inner layer?). Feature extraction needs every layer "
                "to be called once."
            )
        known.update(id(t) for t in outputs)
        steps.append((op, inputs, outputs))
    if any(id(t) not in known for t in model_outputs):
        raise ValueError(
            f"Cannot follow the layer graph of model {model.name!r} to its "
            "outputs."
        )
    return model_inputs[0], model_outputs, steps


def _cut_points(steps, image_input, model_outputs):
    """Indices of the steps whose single output every later step depends on
    only through that output."""
    end = len(steps)
    produced_at = {id(image_input): -1}
    last_use = {}
    for index, (_, inputs, outputs) in enumerate(steps):
        for tensor in inputs:
            last_use[id(tensor)] = index
        for tensor in outputs:
            produced_at[id(tensor)] = index
    for tensor in model_outputs:
        last_use[id(tensor)] = end
    live_delta = [0] * (end + 1)
    live = 0
    for key, start in produced_at.items():
        stop = last_use.get(key, start)
        if stop > start:
            if start < 0:
                live += 1
            else:
                live_delta[start] += 1
            live_delta[stop] -= 1
    cuts = []
    for index, (_, _, outputs) in enumerate(steps):
        live += live_delta[index]
        if live == 1 and len(outputs) == 1 and last_use.get(
            id(outputs[0]), index
        ) > index:
            cuts.append(index)
    return cuts


def _spatial_axes(image_input):
    data_format = keras.config.image_data_format()
    shape = tuple(image_input.shape)
    if len(shape) != 4:
        raise ValueError(
            "Feature extraction needs a 4D image input (batch, H, W, C). "
            f"Received: input shape {shape}"
        )
    return (1, 2) if data_format == "channels_last" else (2, 3)


def _all_levels(model):
    """``{stride: (layer name, tensor, channels)}`` for every stride."""
    image_input, model_outputs, steps = _graph(model)
    axes = _spatial_axes(image_input)
    channel_axis = 3 if axes == (1, 2) else 1
    probe_shape = [1] + [
        PROBE_SIZE if (d is None and i in axes) else d
        for i, d in enumerate(image_input.shape)
    ][1:]
    if any(d is None for d in probe_shape):
        raise ValueError(
            f"Model {model.name!r} has an input with an unknown channel "
            f"dimension: {tuple(image_input.shape)}"
        )
    cuts = [
        i
        for i in _cut_points(steps, image_input, model_outputs)
        if len(steps[i][2][0].shape) == 4
        # A padded copy of a map is not a feature level; the map before
        # the padding is.
        and not isinstance(steps[i][0], keras.layers.ZeroPadding2D)
    ]
    if not cuts:
        return {}
    probe = keras.Model(image_input, [steps[i][2][0] for i in cuts])
    specs = _flat(probe.compute_output_spec(keras.KerasTensor(probe_shape)))
    levels = {}
    for index, spec in zip(cuts, specs):
        size = min(probe_shape[a] / spec.shape[a] for a in axes)
        stride = 2 ** round(math.log2(size)) if size >= 1 else 1
        tensor = steps[index][2][0]
        # Later cut points of the same stride replace earlier ones.
        levels[stride] = (steps[index][0].name, tensor, tensor.shape[channel_axis])
    return levels


def _select(model, levels):
    available = _all_levels(model)
    chosen = {}
    for level in levels:
        stride = _level_stride(level)
        if stride not in available:
            raise ValueError(
                f"Model {model.name!r} has no feature map of stride {stride} "
                f"for level {level!r} (found strides {sorted(available)}: "
                f"levels {['C%d' % round(math.log2(s)) for s in sorted(available) if s > 1]})."
            )
        chosen[level] = (stride,) + available[stride]
    return chosen


def _info(chosen):
    return [
        {
            "name": level,
            "layer": layer,
            "stride": stride,
            "reduction": stride,
            "channels": channels,
        }
        for level, (stride, layer, _, channels) in chosen.items()
    ]


def feature_info(model_or_name, *, levels=("C2", "C3", "C4", "C5")):
    """Describes the feature pyramid levels of a model.

    Args:
        model_or_name: a registered model name (built without weights) or a
            functional `keras.Model`.
        levels: level names ``"C<k>"`` (stride ``2**k``).

    Returns:
        A list of dicts, one per level in the order asked:
        ``{"name": "C2", "layer": "conv2_block3_out", "stride": 4,
        "reduction": 4, "channels": 256}`` (``reduction`` is timm's name for
        the stride).
    """
    levels = _check_levels(levels)
    model = _as_model(model_or_name, None, (None, None, 3))
    return _info(_select(model, levels))


def feature_extractor(
    model_or_name,
    *,
    weights=None,
    input_shape=(None, None, 3),
    levels=("C2", "C3", "C4", "C5"),
    name=None,
):
    """A model that returns a dict of multi-scale feature maps.

    Args:
        model_or_name: a registered model name (see
            `keras_senet.list_models()`), built with ``include_top=False``,
            ``weights`` and ``input_shape``; or a functional `keras.Model`
            (its weights are used as they are).
        weights: with a model name: ``None``, ``"imagenet"`` or the path of
            a weights file, loaded into the full model before its feature
            maps are taken.
        input_shape: with a model name: the input shape; sides may be
            ``None`` (any size; a level of stride s has ``ceil(side / s)``
            pixels per side in the SE-ResNet family).
        levels: level names ``"C<k>"`` (stride ``2**k``), by default
            ``("C2", "C3", "C4", "C5")`` (strides 4, 8, 16, 32).
        name: the new model's name; defaults to ``<model name>_features``.

    Returns:
        A functional `keras.Model` sharing the layers (and weights) of the
        backbone, whose output is a dict ``{level: feature map}``. Its
        attribute ``pyramid_info`` holds `feature_info`'s description.
    """
    levels = _check_levels(levels)
    model = _as_model(model_or_name, weights, input_shape)
    chosen = _select(model, levels)
    outputs = {level: tensor for level, (_, _, tensor, _) in chosen.items()}
    features = keras.Model(
        model.inputs[0], outputs, name=name or f"{model.name}_features"
    )
    features.pyramid_info = tuple(_info(chosen))
    return features
