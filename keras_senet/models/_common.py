"""What every builder shares: argument checks, the input, the head, weights.

Each family module builds its feature extractor; `build_model` wraps it with
the keras.applications contract (``include_top``, ``weights``,
``input_tensor``, ``input_shape``, ``pooling``, ``classes``,
``classifier_activation``) so that every model checks its arguments and
loads its weights the same way.
"""

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
        ImageNet-1k weights, {weights_note}) or the path to a weights file
        (a ``.weights.h5`` of this package, or a PyTorch checkpoint in the
        published layout).
    input_tensor: optional Keras tensor (output of ``keras.Input()``) to use
        as the model's input.
    input_shape: optional shape tuple, ``{default_shape}`` by default with
        ``include_top=True``, ``(None, None, 3)`` otherwise (any size of at
        least {min_size} works: the head pools globally).
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


def _is_path_like(weights):
    return isinstance(weights, (str, os.PathLike)) and weights not in (
        "imagenet",
    )


def validate_arguments(
    *,
    weights,
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
    if weights is not None and weights != "imagenet":
        if not isinstance(weights, (str, os.PathLike)):
            raise ValueError(
                "`weights` must be None, 'imagenet' or the path to a weights "
                f"file. Received: weights={weights!r}"
            )
        if not os.path.exists(weights):
            raise ValueError(
                "`weights` must be None, 'imagenet' or the path to an "
                f"existing weights file. No file at weights={str(weights)!r}"
            )
    if not isinstance(include_top, bool):
        raise ValueError(
            f"`include_top` must be a boolean. Received: include_top={include_top!r}"
        )
    if (
        isinstance(classes, bool)
        or not isinstance(classes, int)
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
        try:
            input_shape = tuple(
                None if d is None else int(d) for d in input_shape
            )
        except (TypeError, ValueError):
            raise ValueError(
                "`input_shape` must be a tuple of 3 integers (or None for "
                f"variable sides). Received: input_shape={input_shape!r}"
            ) from None
        if len(input_shape) != 3:
            raise ValueError(
                "`input_shape` must have 3 dimensions (height, width, "
                f"channels). Received: input_shape={input_shape}"
            )
        channels = input_shape[channel_axis]
        sides = input_shape[:2] if channel_axis == -1 else input_shape[1:]
        if channels != 3:
            raise ValueError(
                f"{model_name} takes 3-channel (RGB) images; `input_shape` "
                f"must have 3 channels ({data_format}). "
                f"Received: input_shape={input_shape}"
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
            input_shape = tensor_shape
            if len(input_shape) != 3 or input_shape[channel_axis] != 3:
                raise ValueError(
                    f"{model_name} takes 3-channel 4D image tensors. "
                    f"Received: input_tensor.shape={tuple(input_tensor.shape)}"
                )
            return validate_arguments(
                weights=weights,
                include_top=include_top,
                input_tensor=None,
                input_shape=input_shape,
                pooling=pooling,
                classes=classes,
                default_size=default_size,
                model_name=model_name,
                min_size=min_size,
            )

    if input_shape is None:
        if include_top:
            size = default_size
            input_shape = (
                (size, size, 3)
                if channel_axis == -1
                else (3, size, size)
            )
        else:
            input_shape = (
                (None, None, 3) if channel_axis == -1 else (3, None, None)
            )
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


def load_weights(model, weights, *, model_id, include_top, classes):
    """Loads ``weights`` (None, "imagenet" or a path) into ``model``."""
    if weights is None:
        return model
    # Imported here: the weights machinery is only needed when asked for.
    from keras_senet import zoo

    zoo.load_into(
        model,
        weights,
        model_id=model_id,
        include_top=include_top,
        classes=classes,
    )
    return model


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
    input_shape = validate_arguments(
        weights=weights,
        include_top=include_top,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        default_size=default_size,
        model_name=model_name,
        min_size=min_size,
    )
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
    model = keras.Model(
        model_inputs(input_tensor, img_input), x, name=name or model_name
    )
    return load_weights(
        model,
        weights,
        model_id=model_id,
        include_top=include_top,
        classes=classes,
    )
