"""SE-ResNet, SE-ResNeXt and SENet-154, as the authors released them.

One builder, `SENet`, makes every variant from a few numbers (`VARIANTS`).
The layout follows the released models (and timm's ``legacy_*`` ports of
them) layer for layer, so that the published checkpoints map onto it one to
one:

- stem: 7x7/2 convolution (SENet-154: three 3x3 convolutions), BN, ReLU,
  then a 3x3/2 max pool in ceil mode;
- four stages of residual blocks, 64/128/256/512 "planes", the first block
  of stages 2-4 striding by 2;
- in SE-ResNet bottlenecks the stride sits on the first 1x1 convolution
  (Caffe style); in SE-ResNeXt and SENet-154 on the grouped 3x3 one;
- the SE block rescales the residual branch after its last BN, before the
  identity is added and the sum goes through ReLU;
- shortcut projections are 1x1 convolutions + BN (SENet-154: 3x3/2 ones in
  stages 2-4).

PyTorch pads explicitly, so every strided or padded convolution here is a
``ZeroPadding2D`` followed by a ``"valid"`` convolution; BN epsilon is 1e-5.

Layer names follow keras.applications' ResNet: ``conv2_block1_1_conv`` is
the first convolution of the first block of the first stage (PyTorch's
``layer1.0.conv1``).
"""

import math

import keras

from keras_senet.conv import GroupConv2D
from keras_senet.layers import SqueezeExcite
from keras_senet.models import _common

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1, Keras convention

# Each variant is data. `block`: "basic" (two 3x3 convs), "bottleneck"
# (SE-ResNet: stride on the first 1x1), "resnext" (grouped 3x3, width
# floor(planes * base_width / 64) * groups) or "senet" (SENet-154: widths
# 2x and 4x planes, grouped 3x3).
VARIANTS = {
    "se_resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
    "se_resnet34": dict(block="basic", layers=(3, 4, 6, 3)),
    "se_resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    "se_resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3)),
    "se_resnet152": dict(block="bottleneck", layers=(3, 8, 36, 3)),
    "se_resnext26_32x4d": dict(
        block="resnext", layers=(2, 2, 2, 2), groups=32, base_width=4
    ),
    "se_resnext50_32x4d": dict(
        block="resnext", layers=(3, 4, 6, 3), groups=32, base_width=4
    ),
    "se_resnext101_32x4d": dict(
        block="resnext", layers=(3, 4, 23, 3), groups=32, base_width=4
    ),
    "senet154": dict(
        block="senet",
        layers=(3, 8, 36, 3),
        groups=64,
        stem="deep",
        stem_width=128,
        downsample_kernel_size=3,
        dropout_rate=0.2,
    ),
}

EXPANSION = {"basic": 1, "bottleneck": 4, "resnext": 4, "senet": 4}
STAGE_PLANES = (64, 128, 256, 512)


class _Names:
    """Readable layer names: ``conv{stage}_block{index}_{suffix}``."""

    def __init__(self, prefix):
        self.prefix = prefix

    def __call__(self, suffix):
        return f"{self.prefix}_{suffix}"


def _conv(x, filters, kernel_size, name, strides=1, padding=0, groups=1):
    """PyTorch-style convolution with symmetric zero padding ``padding``.

    At stride 1 with ``padding == kernel_size // 2`` Keras' "same" padding
    is the same computation; otherwise (strided convolutions, where "same"
    pads only at the bottom/right) the padding is an explicit
    ``ZeroPadding2D`` before a "valid" convolution.
    """
    mode = "valid"
    if padding and strides == 1 and padding == kernel_size // 2:
        mode = "same"
    elif padding:
        x = keras.layers.ZeroPadding2D(padding, name=name + "_pad")(x)
    # Grouped convolutions use GroupConv2D (same weights as Conv2D, fast on
    # TensorFlow's CPU; see keras_senet/conv.py).
    conv_class = GroupConv2D if groups > 1 else keras.layers.Conv2D
    return conv_class(
        filters,
        kernel_size,
        strides=strides,
        padding=mode,
        groups=groups,
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _bn(x, name, channel_axis):
    return keras.layers.BatchNormalization(
        axis=channel_axis,
        epsilon=BN_EPSILON,
        momentum=BN_MOMENTUM,
        name=name,
    )(x)


def _conv_bn(x, filters, kernel_size, n, index, channel_axis, relu=True, **kw):
    x = _conv(x, filters, kernel_size, n(f"{index}_conv"), **kw)
    x = _bn(x, n(f"{index}_bn"), channel_axis)
    if relu:
        x = keras.layers.ReLU(name=n(f"{index}_relu"))(x)
    return x


def _residual_branch(x, block, planes, stride, groups, base_width, n, axis):
    """The convolutions of one block's residual branch, up to its last BN."""
    if block == "basic":
        x = _conv_bn(x, planes, 3, n, 1, axis, strides=stride, padding=1)
        # In the released basic blocks a ReLU follows the second BN, before
        # the SE block.
        return _conv_bn(x, planes, 3, n, 2, axis, padding=1)
    if block == "bottleneck":
        x = _conv_bn(x, planes, 1, n, 1, axis, strides=stride)
        x = _conv_bn(x, planes, 3, n, 2, axis, padding=1, groups=groups)
        return _conv_bn(x, planes * 4, 1, n, 3, axis, relu=False)
    if block == "resnext":
        width = math.floor(planes * base_width / 64) * groups
        x = _conv_bn(x, width, 1, n, 1, axis)
        x = _conv_bn(
            x, width, 3, n, 2, axis, strides=stride, padding=1, groups=groups
        )
        return _conv_bn(x, planes * 4, 1, n, 3, axis, relu=False)
    if block == "senet":
        x = _conv_bn(x, planes * 2, 1, n, 1, axis)
        x = _conv_bn(
            x,
            planes * 4,
            3,
            n,
            2,
            axis,
            strides=stride,
            padding=1,
            groups=groups,
        )
        return _conv_bn(x, planes * 4, 1, n, 3, axis, relu=False)
    raise ValueError(f"Unknown block type: {block!r}")


def se_block(
    x,
    *,
    block,
    planes,
    stride,
    groups,
    base_width,
    reduction,
    downsample,
    downsample_kernel_size,
    name,
    channel_axis,
):
    """One SE residual block: branch -> SE -> + shortcut -> ReLU."""
    n = _Names(name)
    data_format = "channels_last" if channel_axis == -1 else "channels_first"
    shortcut = x
    if downsample:
        k = downsample_kernel_size
        shortcut = _conv(
            x,
            planes * EXPANSION[block],
            k,
            n("0_conv"),
            strides=stride,
            padding=k // 2,
        )
        shortcut = _bn(shortcut, n("0_bn"), channel_axis)
    x = _residual_branch(
        x, block, planes, stride, groups, base_width, n, channel_axis
    )
    # SE, the identity add and the ReLU in one layer: relu(x * gates +
    # shortcut), one pass over the map on TensorFlow's CPU (fused.py).
    x = SqueezeExcite(reduction=reduction, data_format=data_format, name=n("se"))(
        x, shortcut=shortcut
    )
    return keras.layers.Identity(name=n("out"))(x)


def build_stem(x, *, stem_type, stem_width, channel_axis):
    """Stem: convolutions to stride 2, then the ceil-mode 3x3/2 max pool."""
    if stem_type == "deep":
        x = _conv(x, 64, 3, "conv1_1_conv", strides=2, padding=1)
        x = _bn(x, "conv1_1_bn", channel_axis)
        x = keras.layers.ReLU(name="conv1_1_relu")(x)
        x = _conv(x, 64, 3, "conv1_2_conv", padding=1)
        x = _bn(x, "conv1_2_bn", channel_axis)
        x = keras.layers.ReLU(name="conv1_2_relu")(x)
        x = _conv(x, stem_width, 3, "conv1_3_conv", padding=1)
        x = _bn(x, "conv1_3_bn", channel_axis)
        x = keras.layers.ReLU(name="conv1_3_relu")(x)
    else:
        x = _conv(x, stem_width, 7, "conv1_conv", strides=2, padding=3)
        x = _bn(x, "conv1_bn", channel_axis)
        x = keras.layers.ReLU(name="conv1_relu")(x)
    # PyTorch's MaxPool2d(3, 2, ceil_mode=True): its output has
    # ceil((H - 3) / 2) + 1 rows, which one row (column) of padding at the
    # bottom (right) reproduces for every H. The inputs follow a ReLU, so
    # zero padding never wins the max.
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def senet_features(
    x,
    *,
    block,
    layers,
    groups=1,
    base_width=64,
    reduction=16,
    stem="7x7",
    stem_width=64,
    downsample_kernel_size=1,
    channel_axis=-1,
    return_stages=False,
):
    """The SE network's convolutional body (stem and four stages).

    Returns the last feature map, or with ``return_stages`` the list of the
    outputs of the four stages (strides 4, 8, 16, 32).
    """
    x = build_stem(
        x, stem_type=stem, stem_width=stem_width, channel_axis=channel_axis
    )
    in_channels = stem_width
    stages = []
    for stage_index, (planes, num_blocks) in enumerate(zip(STAGE_PLANES, layers)):
        for block_index in range(num_blocks):
            stride = 2 if (stage_index > 0 and block_index == 0) else 1
            out_channels = planes * EXPANSION[block]
            downsample = block_index == 0 and (
                stride != 1 or in_channels != out_channels
            )
            x = se_block(
                x,
                block=block,
                planes=planes,
                stride=stride,
                groups=groups,
                base_width=base_width,
                reduction=reduction,
                downsample=downsample,
                # The first stage keeps a 1x1 projection.
                downsample_kernel_size=(
                    downsample_kernel_size if stage_index > 0 else 1
                ),
                name=f"conv{stage_index + 2}_block{block_index + 1}",
                channel_axis=channel_axis,
            )
            in_channels = out_channels
        stages.append(x)
    return stages if return_stages else x


def SENet(
    variant,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
):
    """Builds a variant of `VARIANTS` with the keras.applications contract."""
    if variant not in VARIANTS:
        raise ValueError(
            f"Unknown SENet variant. Expected one of {sorted(VARIANTS)}. "
            f"Received: variant={variant!r}"
        )
    config = dict(VARIANTS[variant])
    dropout_rate = config.pop("dropout_rate", 0.0)
    return _common.build_model(
        lambda x, channel_axis: senet_features(
            x, channel_axis=channel_axis, **config
        ),
        model_id=variant,
        model_name=variant,
        default_size=224,
        dropout_rate=dropout_rate,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
    )


def _builder(function_name, variant, title, weights_note):
    def builder(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        name=None,
    ):
        return SENet(
            variant,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
        )

    builder.__name__ = builder.__qualname__ = function_name
    builder.__doc__ = _common.BASE_DOCSTRING.format(
        title=title,
        reference=_SENET_REF,
        dropout="dropout 0.2, " if VARIANTS[variant].get("dropout_rate") else "",
        weights_note=weights_note,
        default_shape="(224, 224, 3)",
        min_size=_common.MIN_SIZE,
    )
    builder.variant = variant
    return builder


_SENET_REF = (
    "[Squeeze-and-Excitation Networks](https://arxiv.org/abs/1709.01507) "
    "(CVPR 2018)"
)
_CADENE = "converted from the authors' Caffe release by R. Cadene"
_TIMM = "trained with timm by R. Wightman"

SEResNet18 = _builder("SEResNet18", "se_resnet18", "SE-ResNet-18", _TIMM)
SEResNet34 = _builder("SEResNet34", "se_resnet34", "SE-ResNet-34", _TIMM)
SEResNet50 = _builder("SEResNet50", "se_resnet50", "SE-ResNet-50", _CADENE)
SEResNet101 = _builder("SEResNet101", "se_resnet101", "SE-ResNet-101", _CADENE)
SEResNet152 = _builder("SEResNet152", "se_resnet152", "SE-ResNet-152", _CADENE)
SEResNeXt26 = _builder(
    "SEResNeXt26", "se_resnext26_32x4d", "SE-ResNeXt-26 (32x4d)", _TIMM
)
SEResNeXt50 = _builder(
    "SEResNeXt50", "se_resnext50_32x4d", "SE-ResNeXt-50 (32x4d)", _CADENE
)
SEResNeXt101 = _builder(
    "SEResNeXt101", "se_resnext101_32x4d", "SE-ResNeXt-101 (32x4d)", _CADENE
)
SENet154 = _builder("SENet154", "senet154", "SENet-154", _CADENE)
BUILDERS = {
    b.variant: b
    for b in (
        SEResNet18,
        SEResNet34,
        SEResNet50,
        SEResNet101,
        SEResNet152,
        SEResNeXt26,
        SEResNeXt50,
        SEResNeXt101,
        SENet154,
    )
}
