"""SE-BN-Inception: BN-Inception (Ioffe & Szegedy 2015) with SE blocks.

The layout is the one the SE authors released as SE-BN-Inception (Caffe)
and that the PyTorch "bninception" port (Cadene's pretrained-models) uses:

- stem: 7x7/2 conv 64, 3x3/2 max pool, 1x1 conv 64, 3x3 conv 192, 3x3/2
  max pool (both pools in Caffe's ceil mode);
- ten Inception modules 3a-3c, 4a-4e, 5a-5b (`MODULES`, the table of the
  BN paper); the paper's 5x5 branch is two stacked 3x3 convolutions; 3c and
  4e halve the grid;
- every convolution carries a bias and is followed by BatchNorm (epsilon
  1e-5, with scale) and ReLU, as in the Caffe model.

The SE block rescales the concatenated output of every module.

Padding reproduces Caffe / PyTorch exactly: explicit ``ZeroPadding2D`` before
strided convolutions; ceil-mode max pools as one row and column of zero
padding at the bottom/right (the inputs follow a ReLU, so zeros never win
the max); 3x3/1 average pools count the zero padding (Caffe's and PyTorch's
``count_include_pad``). The pool branch of the reducing modules 3c and 4e
uses "same" max pooling, equal to the ceil mode on the even grids PyTorch
accepts there, and still aligned with the strided convolutions on odd ones.

Layer names follow the Caffe/PyTorch model: ``inception_4a_double_3x3_1_conv``
and ``..._bn`` are PyTorch's ``inception_4a_double_3x3_1`` and
``inception_4a_double_3x3_1_bn``.
"""

from typing import NamedTuple

import keras

from keras_senet.layers import BatchNormalization
from keras_senet.layers import SqueezeExcite

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Caffe/PyTorch momentum 0.1, Keras convention


class Module(NamedTuple):
    """One row of the BN-Inception table (BN paper, Figure 5).

    Widths of the 1x1 branch, the 3x3 branch (reduce, 3x3), the double-3x3
    branch (reduce, both 3x3s) and the pool projection; ``0`` for ``c1x1``
    and ``proj`` means no such branch (the pool is then passed through).
    """

    name: str
    c1x1: int
    c3x3_reduce: int
    c3x3: int
    double_reduce: int
    double: int
    pool: str  # "avg" or "max"
    proj: int
    stride: int = 1


MODULES = (
    Module("3a", 64, 64, 64, 64, 96, "avg", 32),
    Module("3b", 64, 64, 96, 64, 96, "avg", 64),
    Module("3c", 0, 128, 160, 64, 96, "max", 0, stride=2),
    Module("4a", 224, 64, 96, 96, 128, "avg", 128),
    Module("4b", 192, 96, 128, 96, 128, "avg", 128),
    Module("4c", 160, 128, 160, 128, 160, "avg", 128),
    Module("4d", 96, 128, 192, 160, 192, "avg", 128),
    Module("4e", 0, 128, 192, 192, 256, "max", 0, stride=2),
    Module("5a", 352, 192, 320, 160, 224, "avg", 128),
    Module("5b", 352, 192, 320, 192, 224, "max", 128),
)


def conv_bn_relu(x, filters, kernel_size, name, *, strides=1, channel_axis=-1):
    """Caffe-style unit: conv (bias, padding k // 2) -> BN -> ReLU."""
    pad = kernel_size // 2
    padding = "valid"
    if pad and strides == 1:
        padding = "same"  # symmetric, the same as Caffe's padding here
    elif pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=True,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = BatchNormalization(
        axis=channel_axis,
        epsilon=BN_EPSILON,
        momentum=BN_MOMENTUM,
        name=f"{name}_bn",
    )(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def ceil_mode_max_pool(x, name):
    """Caffe's 3x3/2 max pool (ceil mode) on a non-negative input."""
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name=name)(x)


def _pool_branch(x, module, n, axis):
    if not module.proj:  # the reducing modules pass the pool through
        return keras.layers.MaxPooling2D(
            3, strides=module.stride, padding="same", name=f"{n}_pool"
        )(x)
    if module.pool == "avg":
        x = keras.layers.ZeroPadding2D(1, name=f"{n}_pool_pad")(x)
        x = keras.layers.AveragePooling2D(3, strides=1, name=f"{n}_pool")(x)
    else:
        x = keras.layers.MaxPooling2D(
            3, strides=1, padding="same", name=f"{n}_pool"
        )(x)
    return conv_bn_relu(x, module.proj, 1, f"{n}_pool_proj", channel_axis=axis)


def inception_module(x, module, *, use_se, reduction, channel_axis):
    """One module: its branches, concatenated, then (optionally) SE."""
    n = f"inception_{module.name}"
    unit = dict(channel_axis=channel_axis)
    branches = []
    if module.c1x1:
        branches.append(conv_bn_relu(x, module.c1x1, 1, f"{n}_1x1", **unit))
    b = conv_bn_relu(x, module.c3x3_reduce, 1, f"{n}_3x3_reduce", **unit)
    b = conv_bn_relu(b, module.c3x3, 3, f"{n}_3x3", strides=module.stride, **unit)
    branches.append(b)
    b = conv_bn_relu(x, module.double_reduce, 1, f"{n}_double_3x3_reduce", **unit)
    b = conv_bn_relu(b, module.double, 3, f"{n}_double_3x3_1", **unit)
    b = conv_bn_relu(
        b, module.double, 3, f"{n}_double_3x3_2", strides=module.stride, **unit
    )
    branches.append(b)
    branches.append(_pool_branch(x, module, n, channel_axis))
    x = keras.layers.Concatenate(axis=channel_axis, name=f"{n}_output")(branches)
    if use_se:
        x = SqueezeExcite(reduction=reduction, name=f"{n}_se")(x)
    return x


def bn_inception_features(x, *, use_se=True, reduction=16, channel_axis=-1):
    """BN-Inception's convolutional body (stride 32, 1024 channels).

    With ``use_se`` an SE block (reduction ``reduction``) follows every
    module's concatenation.
    """
    unit = dict(channel_axis=channel_axis)
    x = conv_bn_relu(x, 64, 7, "conv1_7x7_s2", strides=2, **unit)
    x = ceil_mode_max_pool(x, "pool1_3x3_s2")
    x = conv_bn_relu(x, 64, 1, "conv2_3x3_reduce", **unit)
    x = conv_bn_relu(x, 192, 3, "conv2_3x3", **unit)
    x = ceil_mode_max_pool(x, "pool2_3x3_s2")
    for module in MODULES:
        x = inception_module(
            x,
            module,
            use_se=use_se,
            reduction=reduction,
            channel_axis=channel_axis,
        )
    return x
