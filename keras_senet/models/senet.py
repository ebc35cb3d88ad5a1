"""SE-ResNet, SE-ResNeXt and SENet-154: the authors' releases and timm's
modern SE-ResNet / SE-ResNeXt family.

One builder, `SENet`, makes every variant from a few numbers (`VARIANTS`),
as timm's ``ResNet`` does from each variant's ``model_args``. The layout
follows the reference models layer for layer, so that their checkpoints map
onto it one to one (`keras_senet.convert`):

- stem: a 7x7/2 convolution, or a "deep" stem of three 3x3 convolutions (the
  first strided), each with BN and ReLU; then a 3x3/2 max pool (ceil mode in
  the released models, padding 1 in timm's), or with anti-aliasing a 2x2/2
  average pool;
- four stages of residual blocks, 64/128/256/512 "planes", the first block
  of stages 2-4 striding by 2;
- bottleneck widths ``floor(planes * base_width / 64) * groups`` (the grouped
  3x3), the first 1x1 ``width / reduce_first`` (SENet-154: 2), the last
  ``4 * planes``; the stride on the 3x3 convolution, except in the released
  SE-ResNet-50/101/152 (Caffe style: on the first 1x1); with anti-aliasing
  (timm's ``aa_layer=nn.AvgPool2d``) a strided block's 3x3 runs at stride 1
  and a 2x2/2 average pool follows its ReLU;
- the SE block rescales the residual branch after its last BN, before the
  shortcut is added and the sum goes through ReLU (`residual_tail`); its
  bottleneck is ``C // 16`` units in the released models, timm's
  ``make_divisible(C / 16, 8)`` in timm's;
- shortcut projections: 1x1 convolution + BN (SENet-154: 3x3/2 in stages
  2-4); timm's "D" variants (``avg_down``) first average-pool 2x2/2 (ceil
  mode, padding not counted) and then project with a stride-1 1x1.

PyTorch pads explicitly, so every strided or padded convolution here is a
``ZeroPadding2D`` followed by a ``"valid"`` convolution; BN epsilon is 1e-5.

Layer names follow keras.applications' ResNet: ``conv2_block1_1_conv`` is
the first convolution of the first block of the first stage (PyTorch's
``layer1.0.conv1``); ``conv3_block1_0_pool`` / ``_0_conv`` / ``_0_bn`` the
shortcut's pool, convolution and BN, ``conv3_block1_2_aa`` a block's
anti-aliasing pool, ``conv1_1_conv`` ... ``conv1_3_bn`` a deep stem and
``pool1_pool`` the stem's pool.
"""

import math

import keras

from keras_senet.conv import GroupConv2D
from keras_senet.layers import BatchNormalization
from keras_senet.layers import SqueezeExcite
from keras_senet.models import _common

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1, Keras convention

# timm's modern family: timm's `ResNet(block=Bottleneck,
# block_args=dict(attn_layer="se"))`, with timm's state-dict names.
_TIMM_RESNET = dict(layout="timm", block="bottleneck", stem_pool="max", se_divisor=8)
# "D" variants: deep 32/32/64 stem and average-pool shortcuts.
_D = dict(stem_channels=(32, 32, 64), avg_down=True)
# Anti-aliased (timm's aa_layer=nn.AvgPool2d): 2x2/2 average pools.
_AA = dict(aa=True, stem_pool="avg")

# Each variant is data: the keyword arguments of `senet_features` (see its
# docstring), plus `layout` (which state-dict names its checkpoints use, see
# `keras_senet.convert.LAYOUTS`; "legacy" by default) and `dropout_rate`.
VARIANTS = {
    # The authors' releases (Cadene's ports; timm's legacy_* models).
    "se_resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
    "se_resnet34": dict(block="basic", layers=(3, 4, 6, 3)),
    "se_resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3), stride_in_1x1=True),
    "se_resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3), stride_in_1x1=True),
    "se_resnet152": dict(block="bottleneck", layers=(3, 8, 36, 3), stride_in_1x1=True),
    "se_resnext26_32x4d": dict(
        block="bottleneck", layers=(2, 2, 2, 2), groups=32, base_width=4
    ),
    "se_resnext50_32x4d": dict(
        block="bottleneck", layers=(3, 4, 6, 3), groups=32, base_width=4
    ),
    "se_resnext101_32x4d": dict(
        block="bottleneck", layers=(3, 4, 23, 3), groups=32, base_width=4
    ),
    "senet154": dict(
        block="bottleneck",
        layers=(3, 8, 36, 3),
        groups=64,
        base_width=4,
        reduce_first=2,
        stem_channels=(64, 64, 128),
        downsample_kernel_size=3,
        dropout_rate=0.2,
    ),
    # timm's SE-ResNet / SE-ResNeXt (timm/models/resnet.py), timm's names.
    "seresnet50": dict(_TIMM_RESNET, layers=(3, 4, 6, 3)),
    "seresnet152d": dict(_TIMM_RESNET, **_D, layers=(3, 8, 36, 3)),
    "seresnext26d_32x4d": dict(
        _TIMM_RESNET, **_D, layers=(2, 2, 2, 2), groups=32, base_width=4
    ),
    "seresnext26t_32x4d": dict(
        _TIMM_RESNET,
        layers=(2, 2, 2, 2),
        groups=32,
        base_width=4,
        stem_channels=(24, 32, 64),  # timm's "deep_tiered" stem
        avg_down=True,
    ),
    "seresnext50_32x4d": dict(
        _TIMM_RESNET, layers=(3, 4, 6, 3), groups=32, base_width=4
    ),
    "seresnext101_32x4d": dict(
        _TIMM_RESNET, layers=(3, 4, 23, 3), groups=32, base_width=4
    ),
    "seresnext101_64x4d": dict(
        _TIMM_RESNET, layers=(3, 4, 23, 3), groups=64, base_width=4
    ),
    "seresnext101_32x8d": dict(
        _TIMM_RESNET, layers=(3, 4, 23, 3), groups=32, base_width=8
    ),
    "seresnext101d_32x8d": dict(
        _TIMM_RESNET, **_D, layers=(3, 4, 23, 3), groups=32, base_width=8
    ),
    "seresnextaa101d_32x8d": dict(
        _TIMM_RESNET, **_D, **_AA, layers=(3, 4, 23, 3), groups=32, base_width=8
    ),
    "seresnextaa201d_32x8d": dict(
        _TIMM_RESNET,
        **_AA,
        layers=(3, 24, 36, 4),
        groups=32,
        base_width=8,
        stem_channels=(64, 64, 128),
        avg_down=True,
    ),
}

EXPANSION = {"basic": 1, "bottleneck": 4}
STAGE_PLANES = (64, 128, 256, 512)
STEM_POOLS = ("max_ceil", "max", "avg")
LAYOUT_DEFAULT = "legacy"


def layout_of(variant):
    """The state-dict layout (``"legacy"`` or ``"timm"``) of a variant's
    checkpoints; see `keras_senet.convert.LAYOUTS`."""
    if variant not in VARIANTS:
        raise ValueError(
            f"Unknown SENet variant. Expected one of {sorted(VARIANTS)}. "
            f"Received: variant={variant!r}"
        )
    return VARIANTS[variant].get("layout", LAYOUT_DEFAULT)


class _Names:
    """Readable layer names: ``conv{stage}_block{index}_{suffix}``."""

    def __init__(self, prefix):
        self.prefix = prefix

    def __call__(self, suffix):
        return f"{self.prefix}_{suffix}"


def make_divisible(value, divisor=8):
    """timm's ``make_divisible(value, divisor, round_limit=0)``: ``value``
    rounded to the nearest multiple of ``divisor`` (halves up), at least
    ``divisor``."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


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
    return BatchNormalization(
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


def _avg_pool_2x2(x, name, ceil_mode=False):
    """PyTorch's ``AvgPool2d(2, 2)``; with ``ceil_mode`` (and
    ``count_include_pad=False``) an odd side's last window averages its one
    row (column): Keras' "same" pads that row at the bottom (right) and
    leaves the padding out of the average (on TensorFlow and JAX alike)."""
    return keras.layers.AveragePooling2D(
        2, strides=2, padding="same" if ceil_mode else "valid", name=name
    )(x)


def _residual_branch(
    x,
    *,
    block,
    planes,
    stride,
    groups,
    base_width,
    reduce_first,
    stride_in_1x1,
    aa,
    n,
    axis,
):
    """The convolutions of one block's residual branch, up to its last BN."""
    if block == "basic":
        x = _conv_bn(x, planes, 3, n, 1, axis, strides=stride, padding=1)
        # In the released basic blocks a ReLU follows the second BN, before
        # the SE block.
        return _conv_bn(x, planes, 3, n, 2, axis, padding=1)
    if block != "bottleneck":
        raise ValueError(
            "`block` must be 'basic' or 'bottleneck'. "
            f"Received: block={block!r}"
        )
    width = math.floor(planes * base_width / 64) * groups
    stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
    use_aa = aa and stride_3x3 != 1
    x = _conv_bn(x, width // reduce_first, 1, n, 1, axis, strides=stride_1x1)
    x = _conv_bn(
        x,
        width,
        3,
        n,
        2,
        axis,
        strides=1 if use_aa else stride_3x3,
        padding=1,
        groups=groups,
    )
    if use_aa:
        x = _avg_pool_2x2(x, n("2_aa"))
    return _conv_bn(x, planes * EXPANSION[block], 1, n, 3, axis, relu=False)


def _shortcut(x, *, filters, stride, kernel_size, avg_down, n, axis):
    """The projection shortcut: conv + BN, or with ``avg_down`` a 2x2/2
    average pool (ceil mode) then a 1x1 conv + BN."""
    if avg_down:
        if stride != 1:
            x = _avg_pool_2x2(x, n("0_pool"), ceil_mode=True)
        x = _conv(x, filters, 1, n("0_conv"))
    else:
        k = kernel_size if stride != 1 else 1
        x = _conv(x, filters, k, n("0_conv"), strides=stride, padding=k // 2)
    return _bn(x, n("0_bn"), axis)


def residual_tail(x, shortcut, *, name, data_format, **se_args):
    """A residual block's tail: ``relu(SE(x) + shortcut)``.

    One layer, ``{name}_se`` (`SqueezeExcite` with ``se_args``: ``reduction``
    or ``reduced_channels``), called with the shortcut: on TensorFlow's CPU it
    computes the rescale, the add and the ReLU in one pass over the map
    (`keras_senet.fused`). The block's output keeps its name, ``{name}_out``
    (an `Identity`), for feature extraction.
    """
    x = SqueezeExcite(data_format=data_format, name=f"{name}_se", **se_args)(
        x, shortcut=shortcut
    )
    return keras.layers.Identity(name=f"{name}_out")(x)


def se_block(
    x,
    *,
    block,
    planes,
    stride,
    downsample,
    name,
    channel_axis,
    groups=1,
    base_width=64,
    reduce_first=1,
    stride_in_1x1=False,
    aa=False,
    avg_down=False,
    downsample_kernel_size=1,
    reduction=16,
    se_divisor=None,
):
    """One SE residual block: branch -> SE -> + shortcut -> ReLU."""
    n = _Names(name)
    data_format = "channels_last" if channel_axis == -1 else "channels_first"
    out_channels = planes * EXPANSION[block]
    shortcut = x
    if downsample:
        shortcut = _shortcut(
            x,
            filters=out_channels,
            stride=stride,
            kernel_size=downsample_kernel_size,
            avg_down=avg_down,
            n=n,
            axis=channel_axis,
        )
    x = _residual_branch(
        x,
        block=block,
        planes=planes,
        stride=stride,
        groups=groups,
        base_width=base_width,
        reduce_first=reduce_first,
        stride_in_1x1=stride_in_1x1,
        aa=aa,
        n=n,
        axis=channel_axis,
    )
    if se_divisor is None:
        se_args = dict(reduction=reduction)
    else:
        se_args = dict(
            reduced_channels=make_divisible(out_channels / reduction, se_divisor)
        )
    return residual_tail(x, shortcut, name=name, data_format=data_format, **se_args)


def build_stem(x, *, stem_channels=(64,), stem_pool="max_ceil", channel_axis=-1):
    """The stem, to stride 4.

    ``stem_channels``: one width for a 7x7/2 convolution (``conv1_conv``),
    or the widths of a deep stem of 3x3 convolutions (``conv1_1_conv``, ...;
    the first strided), each followed by BN and ReLU. ``stem_pool``:
    ``"max_ceil"`` (3x3/2 max pool in ceil mode, the released models),
    ``"max"`` (3x3/2 with padding 1, timm's) or ``"avg"`` (2x2/2 average
    pool, timm's anti-aliased models).
    """
    if stem_pool not in STEM_POOLS:
        raise ValueError(
            f"`stem_pool` must be one of {STEM_POOLS}. "
            f"Received: stem_pool={stem_pool!r}"
        )
    stem_channels = tuple(stem_channels)
    if len(stem_channels) == 1:
        n = _Names("conv1")
        x = _conv(x, stem_channels[0], 7, n("conv"), strides=2, padding=3)
        x = _bn(x, n("bn"), channel_axis)
        x = keras.layers.ReLU(name=n("relu"))(x)
    else:
        n = _Names("conv1")
        for index, filters in enumerate(stem_channels, start=1):
            x = _conv_bn(
                x,
                filters,
                3,
                n,
                index,
                channel_axis,
                strides=2 if index == 1 else 1,
                padding=1,
            )
    if stem_pool == "avg":
        return _avg_pool_2x2(x, "pool1_pool")
    # PyTorch's MaxPool2d(3, 2, ceil_mode=True): its output has
    # ceil((H - 3) / 2) + 1 rows, which one row (column) of padding at the
    # bottom (right) reproduces for every H; MaxPool2d(3, 2, padding=1)
    # pads one on each side. The inputs follow a ReLU, so zero padding never
    # wins the max.
    padding = ((0, 1), (0, 1)) if stem_pool == "max_ceil" else 1
    x = keras.layers.ZeroPadding2D(padding, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def senet_features(
    x,
    *,
    block,
    layers,
    stem_channels=(64,),
    stem_pool="max_ceil",
    channel_axis=-1,
    return_stages=False,
    **block_options,
):
    """The SE network's convolutional body (stem and four stages).

    Args:
        x: the input tensor.
        block: ``"basic"`` (two 3x3 convolutions) or ``"bottleneck"``.
        layers: blocks per stage (four numbers).
        stem_channels, stem_pool: see `build_stem`.
        channel_axis: -1 (channels_last) or 1.
        return_stages: return the list of the four stages' outputs
            (strides 4, 8, 16, 32) instead of the last one.
        **block_options: for every block (`se_block`): ``groups``,
            ``base_width`` (bottleneck width ``floor(planes * base_width /
            64) * groups``), ``reduce_first`` (first 1x1 width divided by
            it), ``stride_in_1x1`` (Caffe-style stride on the first 1x1),
            ``aa`` (anti-aliasing: a 2x2/2 average pool after a strided
            block's 3x3, which then runs at stride 1), ``avg_down``
            (average-pool shortcuts), ``downsample_kernel_size`` (of strided
            projection shortcuts), ``reduction`` (SE ratio, 16) and
            ``se_divisor`` (None: ``C // reduction`` SE units; an int: timm's
            ``make_divisible(C / reduction, se_divisor)``).
    """
    if block_options.get("aa") and block_options.get("stride_in_1x1"):
        raise ValueError(
            "Anti-aliasing (`aa`) pools after the strided 3x3 convolution; "
            "it cannot be combined with `stride_in_1x1`. "
            f"Received: aa=True, stride_in_1x1=True"
        )
    x = build_stem(
        x, stem_channels=stem_channels, stem_pool=stem_pool, channel_axis=channel_axis
    )
    in_channels = stem_channels[-1]
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
                downsample=downsample,
                name=f"conv{stage_index + 2}_block{block_index + 1}",
                channel_axis=channel_axis,
                **block_options,
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
    config.pop("layout", None)  # the checkpoints' naming, not architecture
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


def _builder(function_name, variant, title, weights_note, reference=None):
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
        reference=reference or _SENET_REF,
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
_TRICKS_REF = (
    "[Bag of Tricks for Image Classification with Convolutional Neural "
    "Networks](https://arxiv.org/abs/1812.01187) (CVPR 2019): the \"D\" deep "
    "stem and average-pool shortcuts"
)
_AA_REF = (
    "[Making Convolutional Networks Shift-Invariant Again]"
    "(https://arxiv.org/abs/1904.11486) (ICML 2019): anti-aliased "
    "downsampling, here timm's 2x2 average-pool form"
)
_TIMM_REF = (
    "[PyTorch Image Models](https://github.com/huggingface/pytorch-image-models) "
    "`timm.models.resnet`: the architecture, layer for layer"
)


def _references(*refs):
    return "\n- ".join((_SENET_REF,) + refs)


_CADENE = "converted from the authors' Caffe release by R. Cadene"
_TIMM = "trained with timm by R. Wightman"
_TIMM_MODERN = "trained with timm by R. Wightman; see the weights registry"

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


def _timm_builder(function_name, variant, title):
    refs = [_TIMM_REF]
    if VARIANTS[variant].get("avg_down"):
        refs.insert(0, _TRICKS_REF)
    if VARIANTS[variant].get("aa"):
        refs.insert(1, _AA_REF)
    return _builder(
        function_name, variant, f"timm's {title}", _TIMM_MODERN, _references(*refs)
    )


# timm's modern family. Three share their natural builder names with the
# released models above (SEResNet50, SEResNeXt50, SEResNeXt101): those are
# reached by their timm names (`create_model("seresnet50")`).
SEResNet152D = _timm_builder("SEResNet152D", "seresnet152d", "SE-ResNet-152-D")
SEResNeXt26D_32x4d = _timm_builder(
    "SEResNeXt26D_32x4d", "seresnext26d_32x4d", "SE-ResNeXt-26-D (32x4d)"
)
SEResNeXt26T_32x4d = _timm_builder(
    "SEResNeXt26T_32x4d",
    "seresnext26t_32x4d",
    "SE-ResNeXt-26-T (32x4d, tiered 24/32/64 stem)",
)
SEResNeXt101_32x8d = _timm_builder(
    "SEResNeXt101_32x8d", "seresnext101_32x8d", "SE-ResNeXt-101 (32x8d)"
)
SEResNeXt101D_32x8d = _timm_builder(
    "SEResNeXt101D_32x8d", "seresnext101d_32x8d", "SE-ResNeXt-101-D (32x8d)"
)
SEResNeXt101_64x4d = _timm_builder(
    "SEResNeXt101_64x4d", "seresnext101_64x4d", "SE-ResNeXt-101 (64x4d)"
)
SEResNeXtAA101D_32x8d = _timm_builder(
    "SEResNeXtAA101D_32x8d",
    "seresnextaa101d_32x8d",
    "anti-aliased SE-ResNeXt-101-D (32x8d)",
)
SEResNeXtAA201D_32x8d = _timm_builder(
    "SEResNeXtAA201D_32x8d",
    "seresnextaa201d_32x8d",
    "anti-aliased SE-ResNeXt-201-D (32x8d)",
)
_TIMM_ONLY_BY_NAME = {
    variant: _timm_builder(variant, variant, title)
    for variant, title in (
        ("seresnet50", "SE-ResNet-50"),
        ("seresnext50_32x4d", "SE-ResNeXt-50 (32x4d)"),
        ("seresnext101_32x4d", "SE-ResNeXt-101 (32x4d)"),
    )
}

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
        SEResNet152D,
        SEResNeXt26D_32x4d,
        SEResNeXt26T_32x4d,
        SEResNeXt101_32x8d,
        SEResNeXt101D_32x8d,
        SEResNeXt101_64x4d,
        SEResNeXtAA101D_32x8d,
        SEResNeXtAA201D_32x8d,
        *_TIMM_ONLY_BY_NAME.values(),
    )
}
