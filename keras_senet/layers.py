"""The Squeeze-and-Excitation block and the few layers the SE models share.

Every layer here is a registered, serialisable Keras 3 layer built from public
Keras layers and ops only, so models that use them save, reload and run on any
Keras backend.
"""

import keras
from keras import ops

PACKAGE = "keras_senet"


def _check_data_format(data_format):
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    return data_format


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-Excitation block (Hu et al., 2017, arXiv 1709.01507).

    Learns one gate per channel and rescales the feature map with it:
    global average pool -> FC (C -> C/r) -> activation -> FC (C/r -> C) ->
    gate -> multiply. The two FCs carry biases, like the 1x1 convolutions of
    the authors' released models, whose weights map onto them one to one.

    Args:
        reduction: the paper's reduction ratio r. The bottleneck has
            ``channels // reduction`` units (at least 1); no rounding to a
            divisor is applied. Defaults to 16.
        reduced_channels: explicit bottleneck width; overrides ``reduction``.
        activation: activation between the two FCs. Defaults to ``"relu"``.
        gate: activation that produces the gates. Defaults to ``"sigmoid"``.
        use_bias: whether the two FCs have biases. Defaults to ``True``.
        data_format: ``"channels_last"`` or ``"channels_first"``; defaults to
            ``keras.config.image_data_format()``.
        **kwargs: standard layer arguments (``name``, ``dtype``, ...).

    Under a mixed precision policy the squeeze and the excitation are computed
    in float32 (the variables' dtype); only the final rescale runs in the
    compute dtype. Averages over large feature maps and the sigmoid's tails
    stay accurate that way, at a negligible cost.

    Input shape: 4D ``(batch, H, W, C)`` (or ``(batch, C, H, W)``).
    Output shape: same as input.
    """

    def __init__(
        self,
        reduction=16,
        reduced_channels=None,
        activation="relu",
        gate="sigmoid",
        use_bias=True,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if reduced_channels is None:
            if not isinstance(reduction, (int, float)) or reduction <= 0:
                raise ValueError(
                    "`reduction` must be a positive number. "
                    f"Received: reduction={reduction!r}"
                )
        elif not isinstance(reduced_channels, int) or reduced_channels < 1:
            raise ValueError(
                "`reduced_channels` must be a positive integer or None. "
                f"Received: reduced_channels={reduced_channels!r}"
            )
        self.reduction = reduction
        self.reduced_channels = reduced_channels
        self.activation = keras.activations.get(activation)
        self.gate = keras.activations.get(gate)
        self.use_bias = bool(use_bias)
        self.data_format = _check_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.supports_masking = False

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(
                "SqueezeExcite needs a known channel dimension. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        if self.reduced_channels is not None:
            hidden = self.reduced_channels
        else:
            hidden = max(1, int(channels // self.reduction))
        self.channels = channels
        self.hidden_channels = hidden
        # The excitation runs in the variable dtype (float32 under mixed
        # precision); see the class docstring.
        inner_dtype = keras.DTypePolicy(self.dtype_policy.variable_dtype)
        self.fc1 = keras.layers.Dense(
            hidden, use_bias=self.use_bias, dtype=inner_dtype, name="fc1"
        )
        self.fc2 = keras.layers.Dense(
            channels, use_bias=self.use_bias, dtype=inner_dtype, name="fc2"
        )
        self.fc1.build((None, channels))
        self.fc2.build((None, hidden))
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis: channels}
        )
        self.built = True

    def squeeze(self, inputs):
        """Per-channel means, shape ``(batch, C)``, in the variable dtype."""
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        x = ops.cast(inputs, self.dtype_policy.variable_dtype)
        return ops.mean(x, axis=spatial)

    def excite(self, squeezed):
        """Gates in (0, 1) for the sigmoid gate, shape ``(batch, C)``."""
        return self.gate(self.fc2(self.activation(self.fc1(squeezed))))

    def call(self, inputs):
        gates = self.excite(self.squeeze(inputs))
        if self.data_format == "channels_last":
            gates = gates[:, None, None, :]
        else:
            gates = gates[:, :, None, None]
        return inputs * ops.cast(gates, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reduction": self.reduction,
                "reduced_channels": self.reduced_channels,
                "activation": keras.activations.serialize(self.activation),
                "gate": keras.activations.serialize(self.gate),
                "use_bias": self.use_bias,
                "data_format": self.data_format,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExciteGates(keras.layers.Layer):
    """The gates ``(batch, C)`` that a `SqueezeExcite` layer computes.

    Wraps (and shares the weights of) ``squeeze_excite``, applying its own
    ``squeeze`` and ``excite`` methods to the feature map it receives.
    """

    def __init__(self, squeeze_excite, **kwargs):
        super().__init__(**kwargs)
        if isinstance(squeeze_excite, dict):
            squeeze_excite = keras.saving.deserialize_keras_object(squeeze_excite)
        if not isinstance(squeeze_excite, SqueezeExcite):
            raise ValueError(
                "`squeeze_excite` must be a SqueezeExcite layer. "
                f"Received: squeeze_excite={squeeze_excite!r}"
            )
        self.squeeze_excite = squeeze_excite

    def build(self, input_shape):
        if not self.squeeze_excite.built:
            self.squeeze_excite.build(input_shape)
        self.built = True

    def call(self, inputs):
        layer = self.squeeze_excite
        return layer.excite(layer.squeeze(inputs))

    def compute_output_shape(self, input_shape):
        channel_axis = -1 if self.squeeze_excite.data_format == "channels_last" else 1
        return (input_shape[0], input_shape[channel_axis])

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape(inputs.shape)
        dtype = self.squeeze_excite.dtype_policy.variable_dtype
        return keras.KerasTensor(shape, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        config["squeeze_excite"] = keras.saving.serialize_keras_object(
            self.squeeze_excite
        )
        return config
