"""The SE-Inception family: SE-BN-Inception, -Inception-v3, -Inception-ResNet-v2.

One builder, `SEInception`, wraps each network body (``bn_inception.py``,
``inception_v3.py``, ``inception_resnet_v2.py``) with the keras.applications
contract; the variants are data (`VARIANTS`). ``use_se=False`` builds the
SE-free base network (BN-Inception, keras.applications' InceptionV3 and
InceptionResNetV2), for comparisons and parameter counts.

No usable ImageNet weights were ever published for these models, so
``weights="imagenet"`` raises a ValueError; train them with
``python -m training.train --model <name>`` and load the ``.weights.h5``
that writes with ``weights=<path>``.

Each model has its own input convention (`PREPROCESS`):
Inception-v3 and Inception-ResNet-v2 take RGB scaled to [-1, 1]
(`preprocess_input_inception`); BN-Inception takes the authors' Caffe input,
BGR in [0, 255] minus the mean pixel (104, 117, 123)
(`preprocess_input_bn_inception`).
"""

import keras
import numpy as np

from keras_senet import imagenet
from keras_senet.models import _common
from keras_senet.models.bn_inception import bn_inception_features
from keras_senet.models.inception_resnet_v2 import inception_resnet_v2_features
from keras_senet.models.inception_v3 import inception_v3_features

# The Caffe mean pixel of the released SE-BN-Inception, in BGR order.
BN_INCEPTION_MEAN_BGR = (104.0, 117.0, 123.0)


# The two conventions as data (mean/std on the [0, 1] scale, in RGB order;
# "bgr": channels reversed after normalising), for input pipelines.
INCEPTION_NORMALIZATION = dict(mean=(0.5,) * 3, std=(0.5,) * 3, channel_order="rgb")
BN_INCEPTION_NORMALIZATION = dict(
    mean=tuple(m / 255.0 for m in reversed(BN_INCEPTION_MEAN_BGR)),
    std=(1.0 / 255.0,) * 3,
    channel_order="bgr",
)


def preprocess_input_inception(x, data_format=None):
    """Preprocesses RGB images for SE-Inception-v3 / SE-Inception-ResNet-v2.

    Args:
        x: RGB images with values in [0, 255], 3D or 4D, channels last (or
            first, see ``data_format``), a NumPy array or a tensor.
        data_format: ``"channels_last"`` or ``"channels_first"``; defaults to
            ``keras.config.image_data_format()``.

    Returns:
        ``x / 127.5 - 1`` (values in [-1, 1]), float32.
    """
    # (x / 255 - 0.5) / 0.5 == x / 127.5 - 1
    return imagenet.preprocess_input(
        x,
        data_format=data_format,
        mean=INCEPTION_NORMALIZATION["mean"],
        std=INCEPTION_NORMALIZATION["std"],
    )


def preprocess_input_bn_inception(x, data_format=None):
    """Preprocesses RGB images for SE-BN-Inception (the Caffe convention).

    Args:
        x: RGB images with values in [0, 255], 3D or 4D, channels last (or
            first, see ``data_format``), a NumPy array or a tensor.
        data_format: ``"channels_last"`` or ``"channels_first"``; defaults to
            ``keras.config.image_data_format()``.

    Returns:
        The images in BGR order, minus the mean pixel (104, 117, 123), on the
        [0, 255] scale, float32.
    """
    data_format = data_format or keras.config.image_data_format()
    # Validates the shape and the data format, and subtracts the mean.
    x = imagenet.preprocess_input(
        x,
        data_format=data_format,
        mean=BN_INCEPTION_NORMALIZATION["mean"],
        std=BN_INCEPTION_NORMALIZATION["std"],
    )
    channel_axis = -1 if data_format == "channels_last" else len(x.shape) - 3
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(np.flip(x, axis=channel_axis))
    return keras.ops.flip(x, axis=channel_axis)


_REFERENCES = {
    "se_bn_inception": "[Batch Normalization: Accelerating Deep Network "
    "Training by Reducing Internal Covariate Shift]"
    "(https://arxiv.org/abs/1502.03167) (ICML 2015)",
    "se_inception_v3": "[Rethinking the Inception Architecture for Computer "
    "Vision](https://arxiv.org/abs/1512.00567) (CVPR 2016)",
    "se_inception_resnet_v2": "[Inception-v4, Inception-ResNet and the Impact "
    "of Residual Connections on Learning](https://arxiv.org/abs/1602.07261) "
    "(AAAI 2017)",
}

# `base`: the name of the SE-free network (``use_se=False``); `min_size`:
# the smallest image side (keras.applications allows 75 for Inception-v3 and
# Inception-ResNet-v2; BN-Inception's stride-32 body runs from 32).
VARIANTS = {
    "se_bn_inception": dict(
        features=bn_inception_features,
        base="bn_inception",
        title="SE-BN-Inception",
        default_size=224,
        min_size=32,
        preprocess=preprocess_input_bn_inception,
        normalization=BN_INCEPTION_NORMALIZATION,
    ),
    "se_inception_v3": dict(
        features=inception_v3_features,
        base="inception_v3",
        title="SE-Inception-v3",
        default_size=299,
        min_size=75,
        preprocess=preprocess_input_inception,
        normalization=INCEPTION_NORMALIZATION,
    ),
    "se_inception_resnet_v2": dict(
        features=inception_resnet_v2_features,
        base="inception_resnet_v2",
        title="SE-Inception-ResNet-v2",
        default_size=299,
        min_size=75,
        preprocess=preprocess_input_inception,
        normalization=INCEPTION_NORMALIZATION,
    ),
}

# Registry name -> the preprocessing function its inputs need.
PREPROCESS = {name: v["preprocess"] for name, v in VARIANTS.items()}


def SEInception(
    variant,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
    use_se=True,
):
    """Builds a variant of `VARIANTS` with the keras.applications contract.

    ``use_se=False`` builds the same network without its SE blocks.
    """
    if variant not in VARIANTS:
        raise ValueError(
            "Unknown SE-Inception variant. Expected one of "
            f"{sorted(VARIANTS)}. Received: variant={variant!r}"
        )
    if not isinstance(use_se, bool):
        raise ValueError(
            f"`use_se` must be a boolean. Received: use_se={use_se!r}"
        )
    config = VARIANTS[variant]
    model_name = variant if use_se else config["base"]
    if isinstance(weights, str) and weights == "imagenet":
        raise ValueError(
            f"No ImageNet weights are published for {model_name!r}: the SE "
            "authors never released SE-Inception weights in a usable form. "
            f"Train the model with `python -m training.train --model "
            f"{variant}` and load the result with weights=<path to the "
            ".weights.h5 file>, or use weights=None. "
            f"Received: weights={weights!r}"
        )
    return _common.build_model(
        lambda x, channel_axis: config["features"](
            x, use_se=use_se, channel_axis=channel_axis
        ),
        model_id=variant,
        model_name=model_name,
        default_size=config["default_size"],
        min_size=config["min_size"],
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
    )


_USE_SE_DOC = """    use_se: ``False`` builds the base network without SE blocks
        ({base}).
"""
_WEIGHTS_DOC = """    weights: ``None`` (random initialisation) or the path to a
        ``.weights.h5`` file of this model (as ``python -m training.train
        --model {variant}`` writes). No ImageNet weights are published for
        it: ``"imagenet"`` raises a ValueError.
"""


def _builder(function_name, variant):
    config = VARIANTS[variant]

    def builder(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        name=None,
        use_se=True,
    ):
        return SEInception(
            variant,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
            use_se=use_se,
        )

    size = config["default_size"]
    doc = _common.BASE_DOCSTRING.format(
        title=config["title"],
        reference=_REFERENCES[variant],
        dropout="",
        weights_note="",
        default_shape=f"({size}, {size}, 3)",
        min_size=config["min_size"],
    )
    # This family has no published weights: its own `weights` paragraph.
    start, end = doc.index("    weights:"), doc.index("    input_tensor:")
    doc = doc[:start] + _WEIGHTS_DOC.format(variant=variant) + doc[end:]
    doc = doc.replace(
        "\nReturns:",
        _USE_SE_DOC.format(base=config["base"])
        + f"\nInputs: preprocess images with `{config['preprocess'].__name__}`."
        "\n\nReturns:",
    )
    builder.__name__ = builder.__qualname__ = function_name
    builder.__doc__ = doc
    builder.variant = variant
    return builder


SEBNInception = _builder("SEBNInception", "se_bn_inception")
SEInceptionV3 = _builder("SEInceptionV3", "se_inception_v3")
SEInceptionResNetV2 = _builder("SEInceptionResNetV2", "se_inception_resnet_v2")

BUILDERS = {
    b.variant: b
    for b in (SEBNInception, SEInceptionV3, SEInceptionResNetV2)
}
