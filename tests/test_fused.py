"""The fused TensorFlow CPU path of SqueezeExcite (keras_senet/fused.py).

Every test compares the fused path with the plain Keras-ops path of the same
layer and weights (values and gradients, float32 to 1e-5), checks that the
fused path really ran, and that models and files of the earlier layout
(SqueezeExcite -> Add -> ReLU) still load into the fused one.
"""

import contextlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_senet
from keras_senet import SqueezeExcite
from keras_senet import fused


@contextlib.contextmanager
def plain_path():
    """Traces inside this block take the plain Keras-ops path."""
    original = fused.use_fused_path
    fused.use_fused_path = lambda inputs: False
    try:
        yield
    finally:
        fused.use_fused_path = original


def _inputs(shape, seed=0, dtype="float32"):
    """A feature map and a shortcut whose sum stays away from ReLU's kink.

    ``|x * gate + shortcut| >= 0.3`` for gates in (0, 1), so rounding
    differences between the two paths cannot flip a ReLU.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.2, 0.2, shape)
    shortcut = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 1.5, shape)
    return x.astype(dtype), shortcut.astype(dtype)


def _values_and_gradients(layer, x, shortcut, use_shortcut):
    x, shortcut = tf.constant(x), tf.constant(shortcut)
    weights = np.linspace(-1.0, 1.0, int(np.prod(x.shape))).reshape(x.shape)
    weights = tf.constant(weights, tf.float32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([x, shortcut])
            if use_shortcut:
                y = layer(x, shortcut=shortcut)
            else:
                y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        sources = [x, shortcut] + list(layer.trainable_variables)
        grads = tape.gradient(loss, sources)
        return [y] + [g if g is not None else tf.zeros([]) for g in grads]

    return step, [v.numpy().astype("float64") for v in step()]


def _assert_close(got, want, tol):
    for index, (a, b) in enumerate(zip(got, want)):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(
            a, b, rtol=0, atol=tol * scale, err_msg=f"output {index}"
        )


def _graph_ops(step):
    graph = step.get_concrete_function().graph
    nodes = list(graph.as_graph_def().node)
    ops = {node.op for node in nodes}
    xla = any("_XlaCompile" in node.attr for node in nodes)
    return ops, xla


@pytest.fixture(params=["xla", "small-map"])
def xla(request, monkeypatch):
    """Both variants of the fused path: XLA clusters (any map size) and the
    one for small maps (fused.XLA_MIN_ELEMENTS) that leaves them out."""
    use = request.param == "xla"
    monkeypatch.setattr(fused, "XLA_MIN_ELEMENTS", 0 if use else 10**12)
    return use


@pytest.mark.parametrize(
    "data_format, use_shortcut, residual_activation",
    [
        ("channels_last", True, "relu"),
        ("channels_last", True, None),
        ("channels_last", False, "relu"),
        ("channels_first", True, "relu"),
    ],
)
def test_fused_equals_plain_values_and_gradients(
    data_format, use_shortcut, residual_activation, xla
):
    shape = (3, 9, 7, 48) if data_format == "channels_last" else (3, 48, 9, 7)
    x, shortcut = _inputs(shape)
    layer = SqueezeExcite(
        reduction=4,
        data_format=data_format,
        residual_activation=residual_activation,
    )
    layer.build(shape)
    rng = np.random.default_rng(1)
    layer.set_weights([rng.normal(0, 0.3, w.shape) for w in layer.get_weights()])

    fused_step, fused_out = _values_and_gradients(layer, x, shortcut, use_shortcut)
    with plain_path():
        plain_step, plain_out = _values_and_gradients(
            layer, x, shortcut, use_shortcut
        )
    _assert_close(fused_out, plain_out, 1e-5)
    # Not vacuous: the two traces differ, the fused one is XLA-marked.
    fused_ops, fused_xla = _graph_ops(fused_step)
    plain_ops, plain_xla = _graph_ops(plain_step)
    assert fused_xla == xla and not plain_xla
    if data_format == "channels_last":
        assert "AvgPool" in fused_ops and "AvgPool" not in plain_ops
    # And the formula itself: relu(x * gates + shortcut).
    gates = layer.excite(layer.squeeze(x)).numpy()
    gates = gates[:, None, None, :] if data_format == "channels_last" else (
        gates[:, :, None, None]
    )
    want = x * gates
    if use_shortcut:
        want = want + shortcut
        if residual_activation == "relu":
            want = np.maximum(want, 0.0)
    np.testing.assert_allclose(fused_out[0], want, atol=1e-5)


def test_unknown_spatial_size_and_eager_calls():
    """Unknown H, W take reduce_mean; eager calls run unmarked ops."""
    x, shortcut = _inputs((2, 6, 5, 32), seed=2)
    layer = SqueezeExcite(reduction=4)
    layer.build(x.shape)
    spec = tf.TensorSpec((None, None, None, 32), tf.float32)
    dynamic = tf.function(lambda a, b: layer(a, shortcut=b),
                          input_signature=[spec, spec])
    with plain_path():
        want = layer(x, shortcut=shortcut).numpy()
    np.testing.assert_allclose(dynamic(x, shortcut).numpy(), want, atol=1e-6)
    np.testing.assert_allclose(layer(x, shortcut=shortcut).numpy(), want, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_fused_equals_plain(policy, xla):
    keras.config.set_dtype_policy(policy)
    layer = SqueezeExcite(reduction=4)
    keras.config.set_dtype_policy("float32")
    compute = policy.split("_")[1]
    x, shortcut = _inputs((2, 8, 8, 32), seed=3, dtype=compute)
    layer.build(x.shape)
    rng = np.random.default_rng(4)
    layer.set_weights([rng.normal(0, 0.3, w.shape) for w in layer.get_weights()])
    assert all(v.dtype == "float32" for v in layer.weights)
    step, fused_out = _values_and_gradients(layer, x, shortcut, True)
    with plain_path():
        _, plain_out = _values_and_gradients(layer, x, shortcut, True)
    # One rounding of the compute dtype apart (bfloat16: 2**-8).
    tol = 1e-2 if compute == "bfloat16" else 2e-3
    _assert_close(fused_out, plain_out, tol)
    # The squeeze and the excitation stay in float32.
    graph = step.get_concrete_function().graph
    pool = [op for op in graph.get_operations() if op.type == "AvgPool"]
    assert pool and all(op.outputs[0].dtype == tf.float32 for op in pool[:1])


def _tiny_residual_model(seed=0):
    """conv -> BN -> SE(shortcut) -> pool -> logits: a residual block."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 16))
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = SqueezeExcite(reduction=4, name="block_se")(x, shortcut=inputs)
    x = keras.layers.Identity(name="block_out")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, name="logits")(x)
    return keras.Model(inputs, outputs)


def test_training_step_fused_equals_plain(monkeypatch):
    monkeypatch.setattr(fused, "XLA_MIN_ELEMENTS", 0)
    data = np.random.default_rng(5).normal(size=(4, 12, 12, 16)).astype("float32")
    labels = np.array([0, 1, 2, 3])
    results = []
    for context in (contextlib.nullcontext, plain_path):
        model = _tiny_residual_model()
        model.compile(
            keras.optimizers.SGD(0.1, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        with context():
            losses = [float(model.train_on_batch(data, labels)) for _ in range(3)]
        results.append((losses, [w.numpy() for w in model.weights]))
    (fused_losses, fused_weights), (plain_losses, plain_weights) = results
    np.testing.assert_allclose(fused_losses, plain_losses, rtol=1e-5)
    for a, b in zip(fused_weights, plain_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(fused_weights[0], _tiny_residual_model().weights[0])


def _earlier_layout(model):
    """The same model, weights shared, in the layout before the fusion:
    SqueezeExcite -> Add(``*_add``) -> ReLU(``*_out``)."""

    def call(layer, *args, **kwargs):
        shortcut = kwargs.pop("shortcut", None)
        if isinstance(layer, SqueezeExcite) and shortcut is not None:
            block = layer.name[: -len("_se")]
            x = layer(*args, **kwargs)
            x = keras.layers.Add(name=block + "_add")([x, shortcut])
            return keras.layers.ReLU(name=block + "_out")(x)
        if isinstance(layer, keras.layers.Identity):
            return args[0]
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call
    )


@pytest.mark.slow
def test_files_of_the_earlier_layout_load(tmp_path):
    model = keras_senet.SEResNet18(weights=None, input_shape=(32, 32, 3),
                                   classes=7, classifier_activation=None)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            rng = np.random.default_rng(len(layer.name))
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape) * 0.1)
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    old = _earlier_layout(model)
    names = [layer.name for layer in old.layers]
    assert "conv2_block1_add" in names and "conv2_block1_out" in names
    x = np.random.default_rng(6).normal(size=(2, 32, 32, 3)).astype("float32")
    want = old.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5)
    old.save(tmp_path / "old.keras")
    old.save_weights(tmp_path / "old.weights.h5")

    restored = keras.models.load_model(tmp_path / "old.keras")
    np.testing.assert_allclose(restored.predict(x, verbose=0), want, atol=1e-5)
    fresh = keras_senet.SEResNet18(weights=None, input_shape=(32, 32, 3),
                                   classes=7, classifier_activation=None)
    fresh.load_weights(tmp_path / "old.weights.h5")
    for layer in model.layers:  # every variable where it was
        for a, b in zip(layer.get_weights(), fresh.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), want, atol=1e-5)


def test_senet_blocks_use_the_fused_tail():
    model = keras_senet.SEResNet18(weights=None, input_shape=(32, 32, 3))
    se = model.get_layer("conv2_block1_se")
    assert isinstance(se, SqueezeExcite) and len(se.input) == 2
    out = model.get_layer("conv2_block1_out")
    assert out.input is se.output
    names = {layer.name for layer in model.layers}
    assert "conv2_block1_add" not in names


def test_shortcut_of_another_shape_is_refused():
    layer = SqueezeExcite(name="se")
    with pytest.raises(ValueError, match="shortcut.shape"):
        layer(keras.Input((8, 8, 16)), shortcut=keras.Input((4, 4, 16)))


@pytest.mark.parametrize("bad", ["gelu", "sigmoid"])
def test_residual_activation_outside_the_fused_set_is_refused(bad):
    with pytest.raises(ValueError, match=f"residual_activation='{bad}'"):
        SqueezeExcite(residual_activation=bad)


def test_float16_large_map_gate_gradient_stays_accurate(xla):
    """TensorFlow's CPU pooling accumulates float16 in float16; the fused
    gradient of the gates must not (56x56 values near 1)."""
    shape = (2, 56, 56, 8)
    rng = np.random.default_rng(8)
    x = (1.0 + 0.01 * rng.uniform(size=shape)).astype("float32")
    layer32 = SqueezeExcite(reduction=4, residual_activation=None)
    layer32.build(shape)
    keras.config.set_dtype_policy("mixed_float16")
    layer16 = SqueezeExcite(reduction=4, residual_activation=None)
    keras.config.set_dtype_policy("float32")
    layer16.build(shape)
    layer16.set_weights(layer32.get_weights())
    grads = []
    for layer, dtype in ((layer32, "float32"), (layer16, "float16")):
        xt = tf.constant(x.astype(dtype))

        @tf.function
        def step(layer=layer, xt=xt):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.cast(layer(xt), tf.float32))
            return tape.gradient(loss, layer.trainable_variables)

        grads.append([g.numpy() for g in step()])
    for g16, g32 in zip(*grads[::-1]):
        np.testing.assert_allclose(g16, g32, rtol=2e-2, atol=2e-2 * np.abs(g32).max())


JAX_SCRIPT = r"""
import sys
import numpy as np
import keras
import keras_senet
from keras_senet import SqueezeExcite
assert keras.backend.backend() == "jax"
x, shortcut, weights = (np.load(sys.argv[1] + name) for name in ("x.npy", "s.npy", "w.npz"))
layer = SqueezeExcite(reduction=4)
layer.build(x.shape)
layer.set_weights([weights[k] for k in sorted(weights.files)])
np.save(sys.argv[1] + "y.npy", np.asarray(layer(x, shortcut=shortcut)))
keras_senet.SEResNet18(weights=None, input_shape=(32, 32, 3))  # builds
print("tensorflow" in sys.modules)
"""


@pytest.mark.slow
def test_jax_backend_same_outputs_and_no_tensorflow(tmp_path):
    """Under JAX the plain path runs, gives the fused path's values, and
    neither building nor calling the layer imports TensorFlow."""
    x, shortcut = _inputs((2, 7, 7, 32), seed=9)
    layer = SqueezeExcite(reduction=4)
    layer.build(x.shape)
    weights = layer.get_weights()
    prefix = str(tmp_path) + os.sep
    np.save(prefix + "x.npy", x)
    np.save(prefix + "s.npy", shortcut)
    np.savez(prefix + "w.npz", **{f"w{i}": w for i, w in enumerate(weights)})
    want = tf.function(lambda a, b: layer(a, shortcut=b))(x, shortcut).numpy()
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, prefix],
        env=env, cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
    np.testing.assert_allclose(np.load(prefix + "y.npy"), want, atol=1e-5)


@pytest.mark.slow
def test_xla_marked_graphs_export(tmp_path, monkeypatch):
    """With the XLA clusters in the graph (any map size here), SavedModel,
    TFLite (built-in ops) and ONNX exports still run and match."""
    from keras_senet import export

    monkeypatch.setattr(fused, "XLA_MIN_ELEMENTS", 0)
    model = _tiny_residual_model(seed=3)
    x = np.random.default_rng(10).normal(size=(1, 12, 12, 16)).astype("float32")
    want = model.predict(x, verbose=0)
    served = tf.saved_model.load(export.export_saved_model(model, str(tmp_path / "sm")))
    graph = served.serve.get_concrete_function(
        tf.TensorSpec((None, 12, 12, 16), tf.float32)).graph.as_graph_def()
    marked = [n for f in graph.library.function for n in f.node_def
              if "_XlaCompile" in n.attr]
    assert marked  # the export really holds the XLA-marked ops
    np.testing.assert_allclose(served.serve(x).numpy(), want, atol=1e-5)
    tflite = export.export_tflite(model, str(tmp_path / "m.tflite"))
    np.testing.assert_allclose(export.run_tflite(tflite, x), want, atol=1e-5)
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(export.export_onnx(model, tmp_path / "m.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(out, want, atol=1e-5)
