"""SqueezeExcite: the formula, configuration, dtypes and errors."""

import keras
import numpy as np
import pytest

from keras_senet import SqueezeExcite


def _numpy_se(x, w1, b1, w2, b2, channels_first=False):
    """The paper's formula, written independently with NumPy."""
    axes = (2, 3) if channels_first else (1, 2)
    z = x.astype(np.float64).mean(axis=axes)  # squeeze
    h = np.maximum(z @ w1 + b1, 0.0)  # FC + ReLU
    s = 1.0 / (1.0 + np.exp(-(h @ w2 + b2)))  # FC + sigmoid
    if channels_first:
        return x * s[:, :, None, None]
    return x * s[:, None, None, :]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_matches_numpy_formula(data_format):
    rng = np.random.default_rng(0)
    shape = (2, 5, 7, 32) if data_format == "channels_last" else (2, 32, 5, 7)
    x = rng.normal(size=shape).astype("float32")
    layer = SqueezeExcite(reduction=4, data_format=data_format)
    layer.build(shape)
    w1 = rng.normal(size=(32, 8)).astype("float32")
    b1 = rng.normal(size=(8,)).astype("float32")
    w2 = rng.normal(size=(8, 32)).astype("float32")
    b2 = rng.normal(size=(32,)).astype("float32")
    layer.fc1.set_weights([w1, b1])
    layer.fc2.set_weights([w2, b2])
    got = keras.ops.convert_to_numpy(layer(x))
    want = _numpy_se(x, w1, b1, w2, b2, data_format == "channels_first")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "channels, kwargs, hidden",
    [
        (64, {}, 4),  # the paper's r = 16
        (2048, {}, 128),
        (40, {"reduction": 16}, 2),  # floor, no rounding to a divisor
        (8, {"reduction": 16}, 1),  # never zero units
        (64, {"reduced_channels": 10}, 10),  # explicit override wins
        (64, {"reduction": 4}, 16),
    ],
)
def test_bottleneck_width(channels, kwargs, hidden):
    layer = SqueezeExcite(**kwargs)
    layer.build((None, 4, 4, channels))
    assert layer.fc1.kernel.shape == (channels, hidden)
    assert layer.fc2.kernel.shape == (hidden, channels)
    assert layer.count_params() == 2 * channels * hidden + hidden + channels


def test_without_bias_and_other_activations():
    layer = SqueezeExcite(use_bias=False, activation="tanh", gate="hard_sigmoid")
    x = np.random.default_rng(1).normal(size=(1, 3, 3, 16)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    assert layer.count_params() == 2 * 16 * 1
    w1, w2 = layer.fc1.kernel.numpy(), layer.fc2.kernel.numpy()
    gate = np.clip(np.tanh(x.mean(axis=(1, 2)) @ w1) @ w2 / 6.0 + 0.5, 0, 1)
    np.testing.assert_allclose(y, x * gate[:, None, None, :], atol=1e-5)


def test_config_round_trip_gives_same_layer():
    layer = SqueezeExcite(
        reduction=8, activation="gelu", gate="sigmoid", use_bias=False, name="se"
    )
    layer.build((None, 6, 6, 48))
    config = layer.get_config()
    clone = SqueezeExcite.from_config(config)
    assert clone.get_config() == config
    for key in ("reduction", "reduced_channels", "activation", "gate", "use_bias",
                "data_format", "residual_activation", "fc_quantization"):
        assert key in config
    clone.build((None, 6, 6, 48))
    clone.set_weights(layer.get_weights())
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 48)).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(x)), keras.ops.convert_to_numpy(clone(x))
    )


def test_compute_output_shape():
    layer = SqueezeExcite()
    assert layer.compute_output_shape((None, 7, 9, 64)) == (None, 7, 9, 64)
    out = layer(keras.Input((None, None, 64)))
    assert tuple(out.shape) == (None, None, None, 64)


def test_in_a_user_model_saves_and_reloads(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(32, 3, padding="same")(inputs)
    x = SqueezeExcite(reduction=4, name="my_se")(x)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype("float32")
    path = tmp_path / "user.keras"
    model.save(path)
    restored = keras.models.load_model(path)  # no custom_objects needed
    assert isinstance(restored.get_layer("my_se"), SqueezeExcite)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_gate_stays_accurate(policy):
    """Large activations over a large map: a float16 sum would overflow."""
    rng = np.random.default_rng(4)
    x = rng.uniform(500.0, 1000.0, size=(2, 64, 64, 32)).astype("float32")
    x[..., ::2] *= 0.01  # channels of very different scale
    ref = SqueezeExcite(reduction=4, name="se32")
    ref.build(x.shape)
    keras.config.set_dtype_policy(policy)
    mixed = SqueezeExcite(reduction=4, name="se_mixed")
    mixed.build(x.shape)
    keras.config.set_dtype_policy("float32")
    weights = [w * 0.002 for w in ref.get_weights()]  # keep gates off the rails
    ref.set_weights(weights)
    mixed.set_weights(weights)
    assert all(v.dtype == "float32" for v in mixed.weights)
    y = mixed(x)
    assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
    gates_ref = keras.ops.convert_to_numpy(ref.excite(ref.squeeze(x)))
    gates_mixed = keras.ops.convert_to_numpy(
        mixed.excite(mixed.squeeze(keras.ops.cast(x, y.dtype)))
    )
    assert np.all(np.isfinite(gates_mixed))
    assert 0.05 < gates_ref.min() and gates_ref.max() < 0.95  # a real test
    # The only error left is the rounding of the input to the compute dtype.
    tol = 2e-3 if policy == "mixed_float16" else 1e-2
    np.testing.assert_allclose(gates_mixed, gates_ref, atol=tol)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")),
        keras.ops.convert_to_numpy(ref(x)),
        rtol=2 * tol,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reduction": 0}, "reduction=0"),
        ({"reduction": -4}, "reduction=-4"),
        ({"reduction": "16"}, "reduction='16'"),
        ({"reduction": float("nan")}, "reduction=nan"),
        ({"reduction": float("inf")}, "reduction=inf"),
        ({"reduction": -float("inf")}, "reduction=-inf"),
        ({"reduction": True}, "reduction=True"),
        ({"reduction": False}, "reduction=False"),
        ({"reduction": None}, "reduction=None"),
        ({"reduction": np.float32("nan")}, "reduction=.*nan"),
        # Checked even when reduced_channels overrides it.
        ({"reduction": float("nan"), "reduced_channels": 4}, "reduction=nan"),
        ({"reduced_channels": 0}, "reduced_channels=0"),
        ({"reduced_channels": 2.5}, "reduced_channels=2.5"),
        ({"reduced_channels": 4.0}, "reduced_channels=4.0"),
        ({"reduced_channels": True}, "reduced_channels=True"),
        ({"reduced_channels": float("nan")}, "reduced_channels=nan"),
        ({"reduced_channels": "8"}, "reduced_channels='8'"),
        ({"data_format": "NHWC"}, "data_format='NHWC'"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SqueezeExcite(**kwargs)


def test_numpy_numbers_are_accepted_and_serialise_as_python_numbers():
    layer = SqueezeExcite(reduction=np.int64(8), reduced_channels=None)
    assert layer.reduction == 8 and type(layer.reduction) is int
    layer = SqueezeExcite(reduction=np.float64(2.5), reduced_channels=np.int32(3))
    assert type(layer.reduction) is float and type(layer.reduced_channels) is int
    layer.build((None, 4, 4, 16))
    assert layer.fc1.units == 3
    assert SqueezeExcite.from_config(layer.get_config()).get_config() == layer.get_config()


def _quantizable_model(residual):
    inputs = keras.Input((8, 8, 16))
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
    x = SqueezeExcite(reduction=4, name="se_plain")(x)
    if residual:  # as in SE-ResNet blocks
        x = SqueezeExcite(reduction=4, name="se_residual")(x, shortcut=inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(6, name="logits")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.filterwarnings("ignore:Layer .* does not have a `quantize`")
@pytest.mark.parametrize("residual", [False, True])
def test_int8_quantized_model_saves_and_reloads(tmp_path, residual):
    """Keras' quantize() on the SE block's inner Dense layers, then save
    and load: the reloaded SE block rebuilds them quantized."""
    keras.utils.set_random_seed(7)
    model = _quantizable_model(residual)
    names = ("se_plain", "se_residual") if residual else ("se_plain",)
    x = np.random.default_rng(7).normal(size=(3, 8, 8, 16)).astype("float32")
    before = model.predict(x, verbose=0)
    model.quantize("int8")
    for name in names:
        se = model.get_layer(name)
        assert se.fc1.quantization_mode == "int8" == se.fc2.quantization_mode
        assert keras.backend.standardize_dtype(se.fc1.kernel.dtype) == "int8"
    quantized = model.predict(x, verbose=0)
    assert 0 < np.abs(quantized - before).max() < 0.05  # really quantized
    model.save(tmp_path / "q.keras")
    restored = keras.models.load_model(tmp_path / "q.keras")
    for name in names:
        se = restored.get_layer(name)
        assert se.fc1.quantization_mode == "int8" == se.fc2.quantization_mode
        for a, b in zip(se.weights, model.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(restored.predict(x, verbose=0), quantized, atol=1e-6)


def test_rejects_unknown_channels_and_wrong_rank():
    with pytest.raises(ValueError, match="channel"):
        SqueezeExcite().build((None, 4, 4, None))
    with pytest.raises(ValueError):
        SqueezeExcite()(keras.Input((8, 16)))
