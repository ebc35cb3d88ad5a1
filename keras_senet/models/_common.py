"""What every builder shares: argument checks, the input, the head, weights.

Each family module builds its feature extractor; `build_model` wraps it with
the keras.applications contract (``include_top``, ``weights``,
``input_tensor``, ``input_shape``, ``pooling``, ``classes``,
``classifier_activation``) so that every model checks its arguments and
loads its weights the same way: it asks the registry (`keras_senet.zoo`,
data) for the record of the requested weights and hands the loading to
`keras_senet.pretrained`, which needs no model code.
"""

import numbers
import os

import keras

MIN_SIZE = 32

BASE_DOCSTRING = """Instantiates the {title} architecture.

Reference:
- {reference}

Args:
    include_top: whether to include the classification head (global average
        pooling, {dropout}a fully connected layer with ``classes`` units).
    weights: ``None`` (random initialisation), ``"imagenet"`` (the published
        weights, {weights_note}; the model's default tag, see
        ``keras_senet.zoo``), a tag of this model's published weights
        (``"a1_in1k"`` or ``"model.a1_in1k"``), or the path to a weights
        file (a ``.weights.h5`` of this package, or a PyTorch ``.pth`` /
        ``.pt`` / ``.bin`` or ``.safetensors`` state dict in the published
        layout). Pretrained weights load into any channel count (the stem
        convolution is adapted as timm does) and any ``classes`` (the
        backbone loads; a head of another size is new).
    input_tensor: optional Keras tensor (output of ``keras.Input()``) to use
        as the model's input.
    input_shape: optional shape tuple, ``{default_shape}`` by default with
        ``include_top=True`` (the published weights' evaluation size when a
        tag is loaded), ``(None, None, 3)`` otherwise (any size of at least
        {min_size} works: the head pools globally; any number of channels).
    pooling: with ``include_top=False``: ``None`` returns the last 4D feature
        map, ``"avg"`` / ``"max"`` apply global average / max pooling.
    classes: number of classes of the classification head.
    classifier_activation: activation of the head's output (a string or
        callable), or ``None`` for logits. Always computed in float32.
    name: the model's name.

Returns:
    A `keras.Model` instance.
"""


def check_data_format():
    data_format = keras.config.image_data_format()
    return data_format, (-1 if data_format == "channels_last" else 1)


def _looks_like_path(weights):
    weights = os.fspath(weights)
    return (
        os.sep in weights
        or (os.altsep is not None and os.altsep in weights)
        or weights.endswith(_weights_suffixes())
    )


def _weights_suffixes():
    return (".weights.h5", ".pth", ".pt", ".bin", ".safetensors", ".h5", ".keras")


def resolve_weights(weights, model_id, model_name):
    """``(record, path)`` for the ``weights`` argument (both None for None).

    ``weights`` is None, ``"imagenet"`` (the default tag), a tag or
    ``model.tag`` of ``model_id`` (see `keras_senet.zoo`), or a path.
    """
    if weights is None:
        return None, None
    # Imported on use: `python -m keras_senet.zoo` must find it unimported.
    from keras_senet import zoo

    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, 'imagenet', a tag of published weights "
            f"or the path to a weights file. Received: weights={weights!r}"
        )
    if isinstance(weights, str) and not _looks_like_path(weights):
        record = zoo.find(model_id, weights)
        if record is not None:
            return record, None
        if weights == "imagenet":
            raise ValueError(
                f"No published ImageNet weights exist for {model_name!r}. "
                "Train it with `python -m training.train --model "
                f"{model_id}` and load the result with weights=<path>. "
                "Models with published weights: "
                f"{sorted({r.model for r in zoo.REGISTRY.values()})}. "
                f"Received: weights={weights!r}"
            )
        if not os.path.isfile(weights):
            tags = zoo.tags(model_id)
            raise ValueError(
                "`weights` must be None, 'imagenet', a tag of this model's "
                f"published weights ({tags or 'it has none'}) or the path to "
                f"an existing weights file. Received: weights={weights!r}"
            )
    if not os.path.isfile(weights):
        raise ValueError(
            "`weights` must be None, 'imagenet' or the path to an existing "
            f"weights file. No file at weights={os.fspath(weights)!r}"
        )
    return None, os.fspath(weights)


def _integral_shape(input_shape):
    """``input_shape`` as a tuple of ints (or None), or a ValueError."""
    error = ValueError(
        "`input_shape` must be a tuple of 3 positive integers (or None for "
        f"variable sides). Received: input_shape={input_shape!r}"
    )
    try:
        dims = tuple(input_shape)
    except TypeError:
        raise error from None
    shape = []
    for d in dims:
        if d is None:
            shape.append(None)
            continue
        if isinstance(d, bool) or not isinstance(d, numbers.Real):
            raise error
        if isinstance(d, numbers.Integral):
            value = int(d)
        elif float(d).is_integer():
            value = int(d)
        else:
            raise error
        if value < 1:
            raise error
        shape.append(value)
    return tuple(shape)


def validate_arguments(
    *,
    include_top,
    input_tensor,
    input_shape,
    pooling,
    classes,
    default_size,
    model_name,
    min_size=MIN_SIZE,
):
    """Checks the builder arguments and returns the input shape to use."""
    if not isinstance(include_top, bool):
        raise ValueError(
            f"`include_top` must be a boolean. Received: include_top={include_top!r}"
        )
    if (
        isinstance(classes, bool)
        or not isinstance(classes, numbers.Integral)
        or classes < 1
    ):
        raise ValueError(
            "`classes` must be a positive integer. "
            f"Received: classes={classes!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            "`pooling` must be one of None, 'avg', 'max'. "
            f"Received: pooling={pooling!r}"
        )

    data_format, channel_axis = check_data_format()
    # Index of the channels in a shape without the batch dimension.
    channel_axis = -1 if channel_axis == -1 else 0
    if input_shape is not None:
        input_shape = _integral_shape(input_shape)
        if len(input_shape) != 3:
            raise ValueError(
                "`input_shape` must have 3 dimensions (height, width, "
                f"channels). Received: input_shape={input_shape}"
            )
        sides = input_shape[:2] if channel_axis == -1 else input_shape[1:]
        if input_shape[channel_axis] is None:
            raise ValueError(
                f"{model_name} needs a known number of channels "
                f"({data_format}). Received: input_shape={input_shape}"
            )
        for side in sides:
            if side is not None and side < min_size:
                raise ValueError(
                    f"{model_name} needs images of at least {min_size}x"
                    f"{min_size} pixels. Received: input_shape={input_shape}"
                )

    if input_tensor is not None:
        if not keras.utils.is_keras_tensor(input_tensor):
            raise ValueError(
                "`input_tensor` must be a Keras tensor (for example the "
                "output of `keras.Input()`). "
                f"Received: input_tensor={input_tensor!r}"
            )
        tensor_shape = tuple(input_tensor.shape[1:])
        if input_shape is not None and any(
            a is not None and b is not None and a != b
            for a, b in zip(input_shape, tensor_shape)
        ):
            raise ValueError(
                "`input_shape` conflicts with the shape of `input_tensor`. "
                f"Received: input_shape={input_shape}, "
                f"input_tensor.shape={tuple(input_tensor.shape)}"
            )
        if input_shape is None:
            if len(tensor_shape) != 3:
                raise ValueError(
                    f"{model_name} takes 4D image tensors. "
                    f"Received: input_tensor.shape={tuple(input_tensor.shape)}"
                )
            return validate_arguments(
                include_top=include_top,
                input_tensor=None,
                input_shape=tensor_shape,
                pooling=pooling,
                classes=classes,
                default_size=default_size,
                model_name=model_name,
                min_size=min_size,
            )

    if input_shape is None:
        size = default_size if include_top else None
        input_shape = (size, size, 3) if channel_axis == -1 else (3, size, size)
    return input_shape


def make_input(input_tensor, input_shape):
    if input_tensor is None:
        return keras.Input(shape=input_shape, name="input_layer")
    return input_tensor


def model_inputs(input_tensor, img_input):
    """The model's inputs: the sources of `input_tensor` when one is given."""
    if input_tensor is None:
        return img_input
    return keras.utils.get_source_inputs(input_tensor)


def add_head(
    x,
    *,
    include_top,
    pooling,
    classes,
    classifier_activation,
    dropout_rate=0.0,
):
    """The keras.applications head: global pool, dropout, classifier."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate:
            x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
        x = keras.layers.Dense(classes, name="logits", dtype="float32")(x)
        if classifier_activation is not None:
            x = keras.layers.Activation(
                classifier_activation, name="predictions", dtype="float32"
            )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def _check_head(record, include_top, classes):
    """Refuses an ImageNet-1k-sized head on a checkpoint of other classes:
    the model would look like an ImageNet-1k classifier and mislabel."""
    if (
        record is not None
        and include_top
        and record.num_classes != 1000
        and classes == 1000
    ):
        raise ValueError(
            f"The weights {record.name} have {record.num_classes} classes "
            f"({record.dataset}), not ImageNet-1k's 1000: a 1000-class head "
            "would silently mislabel. Pass classes="
            f"{record.num_classes} for its own head "
            f"(create_model({record.name!r}, weights='imagenet') does), "
            "include_top=False for the backbone, or another number of "
            "classes for a new head to train. Received: include_top=True, "
            "classes=1000"
        )


def checkpoint_layout(model_id):
    """The state-dict layout of ``model_id``'s checkpoints (None when the
    family has no PyTorch counterpart)."""
    from keras_senet.models import senet

    if model_id in senet.VARIANTS:
        return senet.layout_of(model_id)
    return None


def build_model(
    features,
    *,
    model_id,
    model_name,
    default_size,
    min_size=MIN_SIZE,
    dropout_rate=0.0,
    include_top,
    weights,
    input_tensor,
    input_shape,
    pooling,
    classes,
    classifier_activation,
    name,
):
    """The keras.applications contract around a family's feature extractor.

    Args:
        features: ``features(inputs, channel_axis) -> 4D feature map``.
        model_id: the registry name (which published weights to load).
        model_name: the model's default name.
        default_size: the input side with ``include_top`` and no shape.
        min_size: the smallest input side accepted.
        dropout_rate: dropout before the classifier.
        The rest: the builder arguments, checked here.
    """
    record, path = resolve_weights(weights, model_id, model_name)
    input_shape = validate_arguments(
        include_top=include_top,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        default_size=record.eval_size if record is not None else default_size,
        model_name=model_name,
        min_size=min_size,
    )
    _check_head(record, include_top, classes)
    classes = int(classes)

    def build(input_tensor, input_shape, include_top, classes, name):
        _, channel_axis = check_data_format()
        img_input = make_input(input_tensor, input_shape)
        x = features(img_input, channel_axis)
        x = add_head(
            x,
            include_top=include_top,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            dropout_rate=dropout_rate,
        )
        return keras.Model(
            model_inputs(input_tensor, img_input), x, name=name or model_name
        )

    model = build(input_tensor, input_shape, include_top, classes, name)
    if record is None and path is None:
        return model

    def reference(include_top=True, classes=1000, channels=3):
        """This architecture without weights, of another head / channels."""
        channels_last = check_data_format()[0] == "channels_last"
        shape = (None, None, channels) if channels_last else (channels, None, None)
        return build(None, shape, include_top, classes, None)

    # Imported here: the loading machinery is only needed when asked for.
    from keras_senet import pretrained

    return pretrained.load(
        model,
        record=record,
        path=path,
        layout=checkpoint_layout(model_id),
        reference=reference,
    )
