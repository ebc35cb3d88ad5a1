"""SE-Inception-v3: Inception-v3 (Szegedy et al. 2015) with SE blocks.

The network is keras.applications' ``InceptionV3`` layer for layer (same
convolutions, same "same"/"valid" paddings, BatchNorm without scale and with
epsilon 1e-3, average pools that exclude the padding), so that its SE-free
build has exactly keras.applications' weights. The SE block rescales the
output of every Inception module, i.e. each ``mixedN`` concatenation.

The eleven modules are data (`MODULES`): four module types of the paper
("a": 35x35 grid, "c": 17x17 grid with factorised 7x7 convolutions, "e":
8x8 grid with expanded filter banks) plus the two grid reductions ("b", "d").

Layer names: ``mixed4_b7x7dbl_2_conv`` is the second convolution of the
double-7x7 branch of module ``mixed4``; ``mixed4`` is its concatenation and
``mixed4_se`` the SE block that follows it.
"""

import keras

from keras_senet.layers import BatchNormalization
from keras_senet.layers import SqueezeExcite

BN_EPSILON = 1e-3  # keras.applications' (and TF-slim's) value
BN_MOMENTUM = 0.99


def conv_bn(
    x,
    filters,
    kernel_size,
    name,
    *,
    strides=1,
    padding="same",
    activation="relu",
    channel_axis=-1,
):
    """Convolution (no bias) -> BatchNorm (no scale) -> ReLU.

    The keras.applications Inception unit; ``activation=None`` stops after
    the BatchNorm.
    """
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = BatchNormalization(
        axis=channel_axis,
        scale=False,
        epsilon=BN_EPSILON,
        momentum=BN_MOMENTUM,
        name=f"{name}_bn",
    )(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_relu")(x)
    return x


def stem(x, axis):
    """The stem Inception-v3 and Inception-ResNet-v2 share (stride 8)."""
    x = conv_bn(x, 32, 3, "conv1a", strides=2, padding="valid", channel_axis=axis)
    x = conv_bn(x, 32, 3, "conv2a", padding="valid", channel_axis=axis)
    x = conv_bn(x, 64, 3, "conv2b", channel_axis=axis)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool3a")(x)
    x = conv_bn(x, 80, 1, "conv3b", padding="valid", channel_axis=axis)
    x = conv_bn(x, 192, 3, "conv4a", padding="valid", channel_axis=axis)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool5a")(x)
    return x


def _avg_pool_branch(x, filters, name, axis):
    x = keras.layers.AveragePooling2D(
        3, strides=1, padding="same", name=f"{name}_pool"
    )(x)
    return conv_bn(x, filters, 1, f"{name}_bpool", channel_axis=axis)


def _module_a(x, pool_filters, name, axis):
    """35x35 module: 1x1, 5x5, double 3x3 and pool branches."""
    b1 = conv_bn(x, 64, 1, f"{name}_b1x1", channel_axis=axis)
    b5 = conv_bn(x, 48, 1, f"{name}_b5x5_1", channel_axis=axis)
    b5 = conv_bn(b5, 64, 5, f"{name}_b5x5_2", channel_axis=axis)
    b3 = conv_bn(x, 64, 1, f"{name}_b3x3dbl_1", channel_axis=axis)
    b3 = conv_bn(b3, 96, 3, f"{name}_b3x3dbl_2", channel_axis=axis)
    b3 = conv_bn(b3, 96, 3, f"{name}_b3x3dbl_3", channel_axis=axis)
    return [b1, b5, b3, _avg_pool_branch(x, pool_filters, name, axis)]


def _module_b(x, name, axis):
    """Grid reduction 35x35 -> 17x17."""
    b3 = conv_bn(
        x, 384, 3, f"{name}_b3x3", strides=2, padding="valid", channel_axis=axis
    )
    bd = conv_bn(x, 64, 1, f"{name}_b3x3dbl_1", channel_axis=axis)
    bd = conv_bn(bd, 96, 3, f"{name}_b3x3dbl_2", channel_axis=axis)
    bd = conv_bn(
        bd,
        96,
        3,
        f"{name}_b3x3dbl_3",
        strides=2,
        padding="valid",
        channel_axis=axis,
    )
    pool = keras.layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return [b3, bd, pool]


def _module_c(x, width, name, axis):
    """17x17 module with factorised 7x7 convolutions of ``width`` filters."""
    b1 = conv_bn(x, 192, 1, f"{name}_b1x1", channel_axis=axis)
    b7 = conv_bn(x, width, 1, f"{name}_b7x7_1", channel_axis=axis)
    b7 = conv_bn(b7, width, (1, 7), f"{name}_b7x7_2", channel_axis=axis)
    b7 = conv_bn(b7, 192, (7, 1), f"{name}_b7x7_3", channel_axis=axis)
    bd = conv_bn(x, width, 1, f"{name}_b7x7dbl_1", channel_axis=axis)
    bd = conv_bn(bd, width, (7, 1), f"{name}_b7x7dbl_2", channel_axis=axis)
    bd = conv_bn(bd, width, (1, 7), f"{name}_b7x7dbl_3", channel_axis=axis)
    bd = conv_bn(bd, width, (7, 1), f"{name}_b7x7dbl_4", channel_axis=axis)
    bd = conv_bn(bd, 192, (1, 7), f"{name}_b7x7dbl_5", channel_axis=axis)
    return [b1, b7, bd, _avg_pool_branch(x, 192, name, axis)]


def _module_d(x, name, axis):
    """Grid reduction 17x17 -> 8x8."""
    b3 = conv_bn(x, 192, 1, f"{name}_b3x3_1", channel_axis=axis)
    b3 = conv_bn(
        b3,
        320,
        3,
        f"{name}_b3x3_2",
        strides=2,
        padding="valid",
        channel_axis=axis,
    )
    b7 = conv_bn(x, 192, 1, f"{name}_b7x7x3_1", channel_axis=axis)
    b7 = conv_bn(b7, 192, (1, 7), f"{name}_b7x7x3_2", channel_axis=axis)
    b7 = conv_bn(b7, 192, (7, 1), f"{name}_b7x7x3_3", channel_axis=axis)
    b7 = conv_bn(
        b7,
        192,
        3,
        f"{name}_b7x7x3_4",
        strides=2,
        padding="valid",
        channel_axis=axis,
    )
    pool = keras.layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return [b3, b7, pool]


def _split_1x3_3x1(x, name, axis):
    """The "expanded" pair: 1x3 and 3x1 convolutions side by side."""
    a = conv_bn(x, 384, (1, 3), f"{name}a", channel_axis=axis)
    b = conv_bn(x, 384, (3, 1), f"{name}b", channel_axis=axis)
    return keras.layers.Concatenate(axis=axis, name=f"{name}_concat")([a, b])


def _module_e(x, name, axis):
    """8x8 module with expanded filter banks."""
    b1 = conv_bn(x, 320, 1, f"{name}_b1x1", channel_axis=axis)
    b3 = conv_bn(x, 384, 1, f"{name}_b3x3_1", channel_axis=axis)
    b3 = _split_1x3_3x1(b3, f"{name}_b3x3_2", axis)
    bd = conv_bn(x, 448, 1, f"{name}_b3x3dbl_1", channel_axis=axis)
    bd = conv_bn(bd, 384, 3, f"{name}_b3x3dbl_2", channel_axis=axis)
    bd = _split_1x3_3x1(bd, f"{name}_b3x3dbl_3", axis)
    return [b1, b3, bd, _avg_pool_branch(x, 192, name, axis)]


_MODULE_TYPES = {
    "a": _module_a,
    "b": _module_b,
    "c": _module_c,
    "d": _module_d,
    "e": _module_e,
}

# (type, arguments) of mixed0 ... mixed10: "a" takes the pool projection's
# width, "c" the width of its 7x7 convolutions.
MODULES = (
    ("a", 32),
    ("a", 64),
    ("a", 64),
    ("b",),
    ("c", 128),
    ("c", 160),
    ("c", 160),
    ("c", 192),
    ("d",),
    ("e",),
    ("e",),
)


def inception_v3_features(x, *, use_se=True, reduction=16, channel_axis=-1):
    """Inception-v3's convolutional body (stride 32, 2048 channels).

    With ``use_se`` an SE block (reduction ``reduction``) follows every
    module's concatenation.
    """
    axis = channel_axis
    x = stem(x, axis)
    for index, (module_type, *args) in enumerate(MODULES):
        name = f"mixed{index}"
        branches = _MODULE_TYPES[module_type](x, *args, name, axis)
        x = keras.layers.Concatenate(axis=axis, name=name)(branches)
        if use_se:
            x = SqueezeExcite(reduction=reduction, name=f"{name}_se")(x)
    return x
