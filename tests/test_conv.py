"""GroupConv2D: every formulation equals a NumPy grouped convolution and
Keras' own Conv2D(groups=...), with the same weights, gradients and files."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_senet import conv as conv_lib
from keras_senet.conv import GroupConv2D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_group_conv(x, kernel, groups, stride, pad):
    """Reference: symmetric zero padding ``pad``, then a "valid" grouped
    convolution, in float64, one group and one kernel tap at a time."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, group_in, filters = kernel.shape
    group_out = filters // groups
    n, h, w, _ = x.shape
    oh = (h - kh) // stride + 1
    ow = (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, filters))
    for g in range(groups):
        xs = x[..., g * group_in : (g + 1) * group_in]
        ks = kernel[..., g * group_out : (g + 1) * group_out].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[
                    :, i : i + stride * oh : stride, j : j + stride * ow : stride
                ]
                out[..., g * group_out : (g + 1) * group_out] += np.einsum(
                    "nhwc,co->nhwo", patch, ks[i, j]
                )
    return out


def _as_senet_uses(layer_class, filters, kernel_size, stride, groups, **kw):
    """Padding as `senet._conv` applies it: "same" at stride 1, explicit
    symmetric ZeroPadding2D + "valid" when strided."""
    pad = kernel_size // 2
    conv = layer_class(
        filters,
        kernel_size,
        strides=stride,
        padding="same" if stride == 1 else "valid",
        groups=groups,
        **kw,
    )

    def apply(x):
        if stride != 1 and pad:
            x = keras.layers.ZeroPadding2D(pad)(x)
        return conv(x)

    return conv, apply


# (batch, size, in_channels, filters, kernel_size, groups, stride)
CASES = [
    (2, 9, 16, 16, 3, 4, 1),
    (2, 9, 16, 16, 3, 4, 2),
    (1, 8, 32, 64, 3, 8, 2),
    (3, 7, 24, 12, 1, 3, 1),
    (1, 10, 64, 64, 3, 32, 1),
]


def _random_case(case, seed=0):
    batch, size, cin, filters, k, groups, stride = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, cin)).astype("float32")
    kernel = (rng.standard_normal((k, k, cin // groups, filters)) * 0.2).astype(
        "float32"
    )
    bias = rng.standard_normal(filters).astype("float32")
    return x, kernel, bias


def _layer(case, kernel, bias, layer_class=GroupConv2D):
    _, _, cin, filters, k, groups, stride = case
    conv, apply = _as_senet_uses(layer_class, filters, k, stride, groups)
    conv.build((None, None, None, cin))
    conv.set_weights([kernel, bias])
    return conv, apply


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_matches_numpy_and_keras_conv2d(case, mode):
    x, kernel, bias = _random_case(case)
    _, _, _, _, k, groups, stride = case
    conv, apply = _layer(case, kernel, bias)
    chosen = []

    def run(t):
        chosen.append(conv_lib.select_implementation(t, groups, "channels_last"))
        return apply(t)

    if mode != "eager":
        run = tf.function(run, jit_compile=(mode == "xla"))
    got = keras.ops.convert_to_numpy(run(tf.constant(x)))
    assert chosen[-1] == {"eager": "direct", "graph": "direct", "xla": "chunked"}[mode]
    want = numpy_group_conv(x, kernel, groups, stride, k // 2) + bias
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # Keras' own grouped Conv2D with the same weights agrees too.
    _, native_apply = _layer(case, kernel, bias, keras.layers.Conv2D)
    native = keras.ops.convert_to_numpy(native_apply(tf.constant(x)))
    np.testing.assert_allclose(got, native, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("jit", [False, True])
def test_gradients_equal_keras_conv2d(jit):
    case = (2, 8, 16, 32, 3, 8, 2)
    x, kernel, bias = _random_case(case, seed=1)
    layers = {
        "ours": _layer(case, kernel, bias),
        "keras": _layer(case, kernel, bias, keras.layers.Conv2D),
    }
    target = np.random.default_rng(2).standard_normal((2, 4, 4, 32))
    grads = {}
    for name, (conv, apply) in layers.items():

        def step(t, conv=conv, apply=apply):
            with tf.GradientTape() as tape:
                tape.watch(t)
                loss = tf.reduce_sum((apply(t) - target) ** 2)
            return tape.gradient(loss, [t, conv.kernel.value, conv.bias.value])

        # Keras' side always runs its own (XLA) path; ours follows `jit`.
        fn = tf.function(step, jit_compile=jit if name == "ours" else None)
        grads[name] = [g.numpy() for g in fn(tf.constant(x))]
    for ours, ref in zip(grads["ours"], grads["keras"]):
        assert np.abs(ref).max() > 1e-3
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-5)


def test_block_diagonal_kernel_is_grouped_kernel():
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((3, 3, 2, 12)).astype("float32")
    dense = keras.ops.convert_to_numpy(conv_lib.block_diagonal_kernel(kernel, 3))
    assert dense.shape == (3, 3, 6, 12)
    for g in range(3):
        for h in range(3):
            block = dense[:, :, 2 * g : 2 * g + 2, 4 * h : 4 * h + 4]
            if g == h:
                np.testing.assert_array_equal(block, kernel[..., 4 * g : 4 * g + 4])
            else:
                assert not block.any()


def test_select_implementation_rules():
    x = tf.zeros((1, 4, 4, 8))
    assert conv_lib.select_implementation(x, 1, "channels_last") == "native"
    assert conv_lib.select_implementation(x, 2, "channels_first") == "native"
    with tf.device("/CPU:0"):
        assert conv_lib.select_implementation(
            tf.identity(x), 2, "channels_last"
        ) == "direct"


def test_config_round_trip_and_weights_layout():
    layer = GroupConv2D(
        32, 3, strides=2, groups=4, use_bias=False, name="g", dtype="float32"
    )
    layer.build((None, 9, 9, 16))
    assert tuple(layer.kernel.shape) == (3, 3, 4, 32)
    config = layer.get_config()
    clone = GroupConv2D.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(revived) is GroupConv2D
    assert revived.get_config() == config
    # Conv2D reads the same config: the layers are interchangeable.
    assert keras.layers.Conv2D.from_config(config).get_config() == config


def _tiny_model(layer_class):
    inputs = keras.Input((8, 8, 16))
    x = layer_class(16, 3, padding="same", groups=4, name="gconv")(inputs)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = layer_class(32, 3, strides=2, groups=8, name="gconv_s2")(x)
    return keras.Model(inputs, x)


def test_save_and_load_keras_file(tmp_path):
    model = _tiny_model(GroupConv2D)
    x = np.random.default_rng(4).standard_normal((2, 8, 8, 16)).astype("float32")
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("gconv")) is GroupConv2D
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_weights_files_interchangeable_with_conv2d(tmp_path):
    x = np.random.default_rng(5).standard_normal((2, 8, 8, 16)).astype("float32")
    for source, dest in (
        (keras.layers.Conv2D, GroupConv2D),
        (GroupConv2D, keras.layers.Conv2D),
    ):
        a = _tiny_model(source)
        path = str(tmp_path / f"{source.__name__}.weights.h5")
        a.save_weights(path)
        b = _tiny_model(dest)
        b.load_weights(path)
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(wa.numpy(), wb.numpy())
        np.testing.assert_allclose(a(x).numpy(), b(x).numpy(), atol=1e-5)


def test_se_resnext_uses_group_conv_and_keeps_parameter_count():
    from keras_senet.models.senet import SEResNeXt26

    model = SEResNeXt26(input_shape=(64, 64, 3))
    grouped = [l for l in model.layers if getattr(l, "groups", 1) > 1]
    assert grouped and all(type(l) is GroupConv2D for l in grouped)
    plain = [l for l in model.layers if type(l) is keras.layers.Conv2D]
    assert all(l.groups == 1 for l in plain)
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count == 16_790_280  # timm's se_resnext26_32x4d (REFERENCE.md)


JAX_SCRIPT = r"""
import sys
import numpy as np
import keras
import keras_senet.conv as c
from keras_senet.conv import GroupConv2D
assert keras.backend.backend() == "jax"
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 6, 6, 8)).astype("float32")
k = rng.standard_normal((3, 3, 2, 8)).astype("float32")
layer = GroupConv2D(8, 3, padding="same", groups=4, use_bias=False)
layer.build(x.shape)
layer.set_weights([k])
assert c.select_implementation(x, 4, "channels_last") == "native"
np.save(sys.argv[1], np.asarray(layer(x)))
print("tensorflow" in sys.modules)
"""


def test_jax_backend_native_and_without_tensorflow(tmp_path):
    out = str(tmp_path / "y.npy")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, out],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 8)).astype("float32")
    k = rng.standard_normal((3, 3, 2, 8)).astype("float32")
    np.testing.assert_allclose(
        np.load(out), numpy_group_conv(x, k, 4, 1, 1), atol=1e-5, rtol=1e-5
    )


def test_float16_gradient_uses_chunked_and_matches_float32():
    case = (2, 6, 8, 8, 3, 4, 1)
    x, kernel, bias = _random_case(case, seed=6)
    conv, apply = _layer(case, kernel, bias)
    xh = tf.constant(x, tf.float16)
    assert conv_lib.select_implementation(xh, 4, "channels_last") == "chunked"
    kh = tf.Variable(kernel.astype("float16"))

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            y = conv.convolution_op(xh, kh)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        return y, tape.gradient(loss, kh)

    y, g = grad()
    want = numpy_group_conv(x, kernel, 4, 1, 1)
    np.testing.assert_allclose(y.numpy().astype("float64"), want, atol=2e-2, rtol=1e-2)
    k32 = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        y32 = conv.convolution_op(tf.constant(x), k32)
        loss32 = tf.reduce_sum(y32**2)
    g32 = tape.gradient(loss32, k32).numpy()
    assert np.abs(g32).max() > 1
    np.testing.assert_allclose(
        g.numpy().astype("float32"), g32, atol=2e-2 * np.abs(g32).max()
    )
