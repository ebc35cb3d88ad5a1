"""SE-Inception-ResNet-v2: Inception-ResNet-v2 (Szegedy et al. 2016) with SE.

The network is keras.applications' ``InceptionResNetV2`` layer for layer, so
that its SE-free build has exactly keras.applications' weights. Following
the SE paper, the SE block sits on each residual branch: after the branch's
1x1 "up" projection, before the scaled addition ``x + scale * branch``. The
three non-residual modules (``mixed_5b``, ``mixed_6a``, ``mixed_7a``) carry
no SE block.

The scaled addition is `ScaledResidual`, a registered layer (no ``Lambda``).

Layer names follow keras.applications where it names layers
(``block35_3_mixed``, ``block35_3_conv``, ``block35_3_ac``, ``conv_7b``);
the branch convolutions are ``block35_3_b2_1_conv`` (block, branch, index).
"""

import keras
from keras import ops

from keras_senet.layers import PACKAGE
from keras_senet.layers import SqueezeExcite
from keras_senet.models.inception_v3 import conv_bn
from keras_senet.models.inception_v3 import stem


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaledResidual(keras.layers.Layer):
    """Adds a scaled residual branch: ``shortcut + scale * residual``.

    Args:
        scale: the residual's scale (Inception-ResNet uses 0.17, 0.1, 0.2).
        **kwargs: standard layer arguments (``name``, ``dtype``, ...).

    Input: a list ``[shortcut, residual]`` of tensors of one shape.
    Output: a tensor of that shape.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(
                f"`scale` must be a number. Received: scale={scale!r}"
            )
        self.scale = float(scale)

    def call(self, inputs):
        shortcut, residual = inputs
        return shortcut + residual * ops.cast(self.scale, residual.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config


def _block35(x, n, axis):
    b0 = conv_bn(x, 32, 1, f"{n}_b0", channel_axis=axis)
    b1 = conv_bn(x, 32, 1, f"{n}_b1_1", channel_axis=axis)
    b1 = conv_bn(b1, 32, 3, f"{n}_b1_2", channel_axis=axis)
    b2 = conv_bn(x, 32, 1, f"{n}_b2_1", channel_axis=axis)
    b2 = conv_bn(b2, 48, 3, f"{n}_b2_2", channel_axis=axis)
    b2 = conv_bn(b2, 64, 3, f"{n}_b2_3", channel_axis=axis)
    return [b0, b1, b2]


def _block17(x, n, axis):
    b0 = conv_bn(x, 192, 1, f"{n}_b0", channel_axis=axis)
    b1 = conv_bn(x, 128, 1, f"{n}_b1_1", channel_axis=axis)
    b1 = conv_bn(b1, 160, (1, 7), f"{n}_b1_2", channel_axis=axis)
    b1 = conv_bn(b1, 192, (7, 1), f"{n}_b1_3", channel_axis=axis)
    return [b0, b1]


def _block8(x, n, axis):
    b0 = conv_bn(x, 192, 1, f"{n}_b0", channel_axis=axis)
    b1 = conv_bn(x, 192, 1, f"{n}_b1_1", channel_axis=axis)
    b1 = conv_bn(b1, 224, (1, 3), f"{n}_b1_2", channel_axis=axis)
    b1 = conv_bn(b1, 256, (3, 1), f"{n}_b1_3", channel_axis=axis)
    return [b0, b1]


_BLOCK_TYPES = {"block35": _block35, "block17": _block17, "block8": _block8}

# The three residual stages: (block type, number of blocks, residual scale).
# The very last block8 is special: scale 1.0 and no ReLU after the addition.
STAGES = (("block35", 10, 0.17), ("block17", 20, 0.1), ("block8", 10, 0.2))


def inception_resnet_block(
    x, block_type, index, *, scale, activation, use_se, reduction, channel_axis
):
    """One residual block: branches -> concat -> 1x1 up -> SE -> scaled add."""
    n = f"{block_type}_{index}"
    branches = _BLOCK_TYPES[block_type](x, n, channel_axis)
    mixed = keras.layers.Concatenate(axis=channel_axis, name=f"{n}_mixed")(
        branches
    )
    up = keras.layers.Conv2D(
        x.shape[channel_axis], 1, use_bias=True, name=f"{n}_conv"
    )(mixed)
    if use_se:
        up = SqueezeExcite(reduction=reduction, name=f"{n}_se")(up)
    x = ScaledResidual(scale, name=f"{n}_add")([x, up])
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{n}_ac")(x)
    return x


def _mixed_5b(x, axis):
    b0 = conv_bn(x, 96, 1, "mixed_5b_b0", channel_axis=axis)
    b1 = conv_bn(x, 48, 1, "mixed_5b_b1_1", channel_axis=axis)
    b1 = conv_bn(b1, 64, 5, "mixed_5b_b1_2", channel_axis=axis)
    b2 = conv_bn(x, 64, 1, "mixed_5b_b2_1", channel_axis=axis)
    b2 = conv_bn(b2, 96, 3, "mixed_5b_b2_2", channel_axis=axis)
    b2 = conv_bn(b2, 96, 3, "mixed_5b_b2_3", channel_axis=axis)
    bp = keras.layers.AveragePooling2D(
        3, strides=1, padding="same", name="mixed_5b_pool"
    )(x)
    bp = conv_bn(bp, 64, 1, "mixed_5b_bpool", channel_axis=axis)
    return keras.layers.Concatenate(axis=axis, name="mixed_5b")(
        [b0, b1, b2, bp]
    )


def _mixed_6a(x, axis):
    valid = dict(strides=2, padding="valid", channel_axis=axis)
    b0 = conv_bn(x, 384, 3, "mixed_6a_b0", **valid)
    b1 = conv_bn(x, 256, 1, "mixed_6a_b1_1", channel_axis=axis)
    b1 = conv_bn(b1, 256, 3, "mixed_6a_b1_2", channel_axis=axis)
    b1 = conv_bn(b1, 384, 3, "mixed_6a_b1_3", **valid)
    bp = keras.layers.MaxPooling2D(3, strides=2, name="mixed_6a_pool")(x)
    return keras.layers.Concatenate(axis=axis, name="mixed_6a")([b0, b1, bp])


def _mixed_7a(x, axis):
    valid = dict(strides=2, padding="valid", channel_axis=axis)
    b0 = conv_bn(x, 256, 1, "mixed_7a_b0_1", channel_axis=axis)
    b0 = conv_bn(b0, 384, 3, "mixed_7a_b0_2", **valid)
    b1 = conv_bn(x, 256, 1, "mixed_7a_b1_1", channel_axis=axis)
    b1 = conv_bn(b1, 288, 3, "mixed_7a_b1_2", **valid)
    b2 = conv_bn(x, 256, 1, "mixed_7a_b2_1", channel_axis=axis)
    b2 = conv_bn(b2, 288, 3, "mixed_7a_b2_2", channel_axis=axis)
    b2 = conv_bn(b2, 320, 3, "mixed_7a_b2_3", **valid)
    bp = keras.layers.MaxPooling2D(3, strides=2, name="mixed_7a_pool")(x)
    return keras.layers.Concatenate(axis=axis, name="mixed_7a")(
        [b0, b1, b2, bp]
    )


_REDUCTIONS = {"block35": _mixed_6a, "block17": _mixed_7a}


def inception_resnet_v2_features(
    x, *, use_se=True, reduction=16, channel_axis=-1
):
    """Inception-ResNet-v2's convolutional body (stride 32, 1536 channels).

    With ``use_se`` an SE block (reduction ``reduction``) rescales every
    residual branch.
    """
    axis = channel_axis
    x = stem(x, axis)
    x = _mixed_5b(x, axis)
    for block_type, num_blocks, scale in STAGES:
        for index in range(1, num_blocks + 1):
            last = block_type == "block8" and index == num_blocks
            x = inception_resnet_block(
                x,
                block_type,
                index,
                scale=1.0 if last else scale,
                activation=None if last else "relu",
                use_se=use_se,
                reduction=reduction,
                channel_axis=axis,
            )
        if block_type in _REDUCTIONS:
            x = _REDUCTIONS[block_type](x, axis)
    return conv_bn(x, 1536, 1, "conv_7b", channel_axis=axis)
