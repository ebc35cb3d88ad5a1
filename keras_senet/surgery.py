"""Model surgery: add Squeeze-and-Excitation blocks to an existing Keras CNN.

`add_squeeze_excite` rewrites a functional model (a `keras.applications`
ResNet, a user's residual network, an Inception-style network) into a new
model with a `SqueezeExcite` block where the SENet paper puts one:

- ``where="residual"``: on the residual branch of every residual addition,
  after the branch's last layer and before the identity is added (the
  paper's SE-ResNet / SE-Inception-ResNet placement);
- ``where="concat"``: on the output of every Inception-style concatenation
  of 4D feature maps along the channel axis (SE-Inception).

How the residual branch is told from the shortcut: each tensor of the graph
gets a depth, the number of layers on the longest path from the model's
inputs to it. An `Add` of 4D tensors is a residual addition when exactly one
of its inputs is strictly shallower than all the others: that one is the
shortcut (the block's input itself, or its short projection, e.g. 1x1
convolution + BN), and every deeper input is a residual branch and gets its
own SE block. An identity shortcut is always shallower than a branch that
starts from it; a projection shortcut is shallower than the branch whenever
it has fewer layers, as in every ResNet-like design. Additions whose
shallowest inputs tie are ambiguous and raise a ValueError naming the
layer; restrict the rewrite with ``layer_names`` to skip them.

A concatenation is rewritten only when it joins 4D tensors along the channel
axis and is not itself an input of another concatenation only (Inception-v3
builds some module outputs from nested concatenations; the SE block belongs
after the outermost one, the module's output).

The graph is rebuilt with the public `keras.models.clone_model` (its
``clone_function`` and ``call_function`` hooks), every layer is cloned and
its weights are copied, so the new model shares no variables with the old
one and holds the same values.

Initialisation: the new SE layers get the standard initialisation of their
two dense layers (Glorot-uniform kernels, zero biases), as when an SE network
is trained from scratch. With a sigmoid gate no initialisation makes an SE
block an identity: the gates start near 0.5 (they depend on the input), so
the rewritten network computes something different from the original until
it is fine-tuned. (Setting the biases of the second FC to a large positive
value drives the gates to 1 and restores the original function, which is how
the tests check the rewiring, but such saturated gates learn slowly.)
"""

import keras

from keras_senet.layers import SqueezeExcite

PLACEMENTS = ("residual", "concat")


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a functional keras.Model. "
            f"Received: model={model!r}"
        )
    if isinstance(model, keras.Sequential):
        raise ValueError(
            f"Model {model.name!r} is a Sequential model: a layer stack has "
            "no residual additions or concatenations to put SE blocks on. "
            "Rebuild it as a functional model with residual blocks."
        )
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if not inputs or not hasattr(model, "outputs"):
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) is not a "
            "functional model (a subclassed model has no layer graph to "
            "rewrite). Build it with the functional API."
        )


def _check_where(where):
    placements = (where,) if isinstance(where, str) else tuple(where)
    if not placements or any(p not in PLACEMENTS for p in placements):
        raise ValueError(
            f"`where` must be one of {PLACEMENTS} or a tuple of them. "
            f"Received: where={where!r}"
        )
    return frozenset(placements)


def _flat(value):
    return list(keras.tree.flatten(value))


def _is_4d(tensor):
    return keras.utils.is_keras_tensor(tensor) and len(tensor.shape) == 4


def _is_channel_concat(layer, inputs, data_format):
    """A `Concatenate` of 4D tensors along the channel axis."""
    if not isinstance(layer, keras.layers.Concatenate):
        return False
    if not inputs or not all(_is_4d(t) for t in inputs):
        return False
    channel_axis = 3 if data_format == "channels_last" else 1
    return layer.axis % 4 == channel_axis


class _Tracer:
    """Follows one `clone_model` pass: depths, producers and consumers.

    Calls are numbered in the order `clone_model` makes them, which is the
    same in every pass over the same model; a plan made in a first pass
    applies to the second by call number.
    """

    def __init__(self):
        self.depth = {}  # id(tensor) -> longest path length from the inputs
        self.calls = []  # (layer, input tensors, output tensors)
        self.consumers = {}  # id(tensor) -> [call index]

    def depth_of(self, tensor):
        return self.depth.get(id(tensor), 0)

    def record(self, layer, inputs, outputs):
        index = len(self.calls)
        depth = 1 + max((self.depth_of(t) for t in inputs), default=0)
        for tensor in outputs:
            self.depth[id(tensor)] = depth
        for tensor in inputs:
            self.consumers.setdefault(id(tensor), []).append(index)
        self.calls.append((layer, inputs, outputs))
        return index


def _is_addition(layer):
    """An `Add` layer, or the `keras.ops.add` of a functional ``x + y``."""
    if isinstance(layer, keras.layers.Add):
        return True
    # `x + y` on Keras tensors records the `Add` operation of keras.ops,
    # whose class is not public; it is told by name and by not being a layer.
    return type(layer).__name__ == "Add" and not isinstance(layer, keras.layers.Layer)


def _fresh_inputs(model):
    """New `keras.Input`s like the model's, under the same names."""
    names = {
        id(layer.output): layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
    }

    def fresh(tensor):
        return keras.Input(
            batch_shape=tensor.shape,
            dtype=tensor.dtype,
            name=names.get(id(tensor)),
        )

    return keras.tree.map_structure(fresh, model.input)


def _residual_branches(name, inputs, tracer):
    """Indices of the residual branches of an `Add`, or raise if unclear."""
    depths = [tracer.depth_of(t) for t in inputs]
    shallowest = min(depths)
    if depths.count(shallowest) != 1:
        raise ValueError(
            f"Cannot tell the residual branch from the shortcut in layer "
            f"{name!r}: its inputs are equally deep (depths {depths}). "
            "Pass `layer_names` to rewrite only the unambiguous additions."
        )
    return [i for i, d in enumerate(depths) if d != shallowest]


def _plan(model, placements, layer_names, data_format, clone_fn):
    """First pass: which calls get SE blocks, and where."""
    tracer = _Tracer()

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        inputs = [t for t in _flat((args, kwargs)) if keras.utils.is_keras_tensor(t)]
        tracer.record(layer, inputs, _flat(outputs))
        return outputs

    keras.models.clone_model(
        model,
        input_tensors=_fresh_inputs(model),
        clone_function=clone_fn,
        call_function=call_function,
        recursive=True,
    )

    if layer_names is not None:
        unknown = sorted(layer_names - {layer.name for layer, _, _ in tracer.calls})
        if unknown:
            raise ValueError(
                f"Model {model.name!r} has no layers named {unknown}. "
                f"Received: layer_names={sorted(layer_names)}"
            )
    plan = {}  # call index -> ("residual", [input positions]) | ("concat",)
    for index, (layer, inputs, outputs) in enumerate(tracer.calls):
        if layer_names is not None and layer.name not in layer_names:
            continue
        if (
            "residual" in placements
            and _is_addition(layer)
            and len(inputs) >= 2
            and all(_is_4d(t) for t in inputs)
        ):
            plan[index] = ("residual", _residual_branches(layer.name, inputs, tracer))
        elif "concat" in placements and _is_channel_concat(
            layer, inputs, data_format
        ):
            consumers = tracer.consumers.get(id(outputs[0]), [])
            nested = consumers and all(
                _is_channel_concat(*tracer.calls[c][:2], data_format)
                for c in consumers
            )
            if not nested:
                plan[index] = ("concat",)
    return plan


def _se_name(layer_name, taken, suffix=""):
    base = layer_name
    for ending in ("_add", "_concat"):
        if base.endswith(ending) and len(base) > len(ending):
            base = base[: -len(ending)]
            break
    for candidate in (f"{base}{suffix}_se", f"{layer_name}{suffix}_se"):
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    index = 1
    while f"{layer_name}{suffix}_se_{index}" in taken:
        index += 1
    taken.add(f"{layer_name}{suffix}_se_{index}")
    return f"{layer_name}{suffix}_se_{index}"


def _layer_names(model):
    names = set()
    for layer in model.layers:
        names.add(layer.name)
        if isinstance(layer, keras.Model):
            names |= _layer_names(layer)
    return names


def add_squeeze_excite(
    model,
    reduction=16,
    *,
    where="residual",
    layer_names=None,
    data_format=None,
    name=None,
):
    """Returns a copy of a functional CNN with SE blocks added.

    Args:
        model: a functional `keras.Model` (e.g.
            `keras.applications.ResNet50(weights=None)`). It is not modified.
        reduction: the SE reduction ratio r (bottleneck ``C // r`` units).
        where: ``"residual"`` (SE on each residual branch, before the
            addition), ``"concat"`` (SE after each Inception-style channel
            concatenation) or a tuple of both. See the module docstring for
            how branches and concatenations are recognised.
        layer_names: optional collection of `Add` / `Concatenate` layer names
            to rewrite; others are left as they are. ``None``: all that
            qualify.
        data_format: ``"channels_last"`` / ``"channels_first"`` of the
            model's feature maps; defaults to
            ``keras.config.image_data_format()``.
        name: name of the new model; defaults to ``"se_" + model.name``.

    Returns:
        A new functional `keras.Model`. Every layer of ``model`` is cloned
        under its own name with its weights copied; the SE layers are named
        after the layer they precede or follow (``conv2_block1_se`` for
        ``conv2_block1_add``; with several branches ``..._branch{i}_se``).
        SE layers use the dtype policy of the layer they are attached to.

    Raises:
        ValueError: for a model that cannot be rewritten (not functional,
            Sequential, no residual addition / concatenation found, an
            ambiguous residual addition), naming the model or layer.
    """
    _check_model(model)
    placements = _check_where(where)
    if data_format is None:
        data_format = keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or reduction <= 0:
        raise ValueError(
            f"`reduction` must be a positive number. Received: reduction={reduction!r}"
        )
    if layer_names is not None:
        layer_names = frozenset([layer_names] if isinstance(layer_names, str) else layer_names)

    def fresh_clone(layer):
        return layer.__class__.from_config(layer.get_config())

    plan = _plan(model, placements, layer_names, data_format, fresh_clone)
    if not plan:
        what = " or ".join(
            {"residual": "residual additions (Add of 4D tensors)",
             "concat": "channel concatenations of 4D tensors"}[p]
            for p in sorted(placements)
        )
        raise ValueError(
            f"Model {model.name!r} has no {what} to put SE blocks on"
            + (f" among layer_names={sorted(layer_names)}" if layer_names else "")
            + f". Received: where={where!r}"
        )

    clones = []  # (original layer, clone)
    taken = _layer_names(model)
    calls = iter(range(10**12))

    def clone_function(layer):
        clone = fresh_clone(layer)
        clones.append((layer, clone))
        return clone

    def make_se(layer, suffix=""):
        return SqueezeExcite(
            reduction=reduction,
            data_format=data_format,
            dtype=getattr(layer, "dtype_policy", None),
            name=_se_name(layer.name, taken, suffix),
        )

    def call_function(layer, *args, **kwargs):
        index = next(calls)
        action = plan.get(index)
        if action is None:
            return layer(*args, **kwargs)
        if action[0] == "concat":
            return make_se(layer)(layer(*args, **kwargs))
        tensors = list(args[0]) if isinstance(layer, keras.layers.Add) else list(args)
        branches = action[1]
        for position in branches:
            suffix = f"_branch{position}" if len(branches) > 1 else ""
            tensors[position] = make_se(layer, suffix)(tensors[position])
        if isinstance(layer, keras.layers.Add):
            return layer(tensors, *args[1:], **kwargs)
        return layer(*tensors, **kwargs)

    new_model = keras.models.clone_model(
        model,
        input_tensors=_fresh_inputs(model),
        clone_function=clone_function,
        call_function=call_function,
        recursive=True,
    )
    for original, clone in clones:
        if getattr(original, "weights", None):
            clone.set_weights(original.get_weights())
    if name is None:
        name = f"se_{model.name}"
    return keras.Model(new_model.input, new_model.output, name=name)
