"""Export: SavedModel (float32 serving, mixed precision), TFLite, ONNX."""

import contextlib
import io
import os
import re

import keras
import numpy as np
import pytest

from keras_senet import SqueezeExcite
from keras_senet import create_model
from keras_senet.export import export_onnx
from keras_senet.export import export_saved_model
from keras_senet.export import export_tflite
from keras_senet.export import run_tflite
from keras_senet.export import ungroup_convolutions

tf = pytest.importorskip("tensorflow")

# Tolerances (measured values in the comments are from this machine).
# Float TFLite vs Keras: max |difference| over max |logit| (~1.5e-6 measured
# for SE-ResNet-18/50 and SE-ResNeXt-26 at 64x64, random weights).
FLOAT_RELATIVE = 1e-5
INT8_MIN_CORRELATION = 0.98  # int8 TFLite vs Keras logits: 0.9999 measured
INT8_MIN_TOP1_AGREEMENT = 0.75


def _images(n, size=64, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype("float32")


def _assert_close_relative(got, expected):
    expected = keras.ops.convert_to_numpy(expected)
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= FLOAT_RELATIVE * scale


def _tflite_ops(path):
    """The operator names of a .tflite file, from TF's model analyzer."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_path=str(path))
    return set(re.findall(r"Op#\d+ (\w+)\(", text.getvalue()))


def _logits_model(name, **kwargs):
    keras.utils.set_random_seed(0)
    return create_model(
        name, input_shape=(64, 64, 3), classes=10, classifier_activation=None, **kwargs
    )


def test_saved_model_float32_signature_matches_keras(tmp_path):
    model = _logits_model("se_resnet18")
    x = _images(3)
    path = tmp_path / "served"
    model.export(str(path), format="tf_saved_model", verbose=False)
    served = tf.saved_model.load(str(path))
    (spec,) = served.serve.concrete_functions[0].structured_input_signature[0]
    assert spec.dtype == tf.float32
    np.testing.assert_allclose(
        served.serve(tf.constant(x)).numpy(), model(x, training=False),
        rtol=1e-5, atol=1e-5,
    )


def test_mixed_precision_model_serves_float32(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    # Pooled features: under mixed_float16 the model itself returns float16.
    model = create_model(
        "se_resnet18", include_top=False, pooling="avg", input_shape=(64, 64, 3)
    )
    assert model.output.dtype == "float16"
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    model.fit(_images(4, seed=1), np.zeros((4, 512)), batch_size=2, verbose=0)
    x = _images(3, seed=2)
    path = export_saved_model(model, tmp_path / "mixed")
    served = tf.saved_model.load(path)
    out = served.serve(tf.constant(x))
    assert out.dtype == tf.float32
    expected = keras.ops.convert_to_numpy(model(x, training=False)).astype("float32")
    # Both run the same float16 graph; float16 keeps ~3 significant digits.
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-2, atol=1e-2)
    # Re-exporting replaces the folder in place.
    assert export_saved_model(model, path) == path
    assert sorted(os.listdir(tmp_path)) == ["mixed"]


@pytest.fixture(scope="module")
def se_resnet18_tflite(tmp_path_factory):
    model = _logits_model("se_resnet18")
    folder = tmp_path_factory.mktemp("tflite")
    float_path = export_tflite(model, folder / "float.tflite")
    int8_path = export_tflite(
        model,
        folder / "int8.tflite",
        quantization="int8",
        representative_data=_images(16, seed=5),
    )
    return model, float_path, int8_path


def test_tflite_float_matches_keras_with_builtin_ops(se_resnet18_tflite):
    model, float_path, _ = se_resnet18_tflite
    x = _images(4, seed=6)
    _assert_close_relative(run_tflite(float_path, x), model(x))
    ops = _tflite_ops(float_path)
    assert {"CONV_2D", "MEAN", "FULLY_CONNECTED", "LOGISTIC", "MUL", "ADD"} <= ops
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in ops)


def test_tflite_int8_agrees_with_keras(se_resnet18_tflite):
    model, _, int8_path = se_resnet18_tflite
    x = _images(8, seed=7)
    expected = keras.ops.convert_to_numpy(model(x))
    got = run_tflite(int8_path, x)
    correlation = np.corrcoef(expected.ravel(), got.ravel())[0, 1]
    agreement = np.mean(expected.argmax(1) == got.argmax(1))
    assert correlation > INT8_MIN_CORRELATION
    assert agreement >= INT8_MIN_TOP1_AGREEMENT
    interpreter = tf.lite.Interpreter(model_path=str(int8_path))
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in dtypes
    assert not any(op.startswith("Flex") for op in _tflite_ops(int8_path))


def _grouped_toy():
    inputs = keras.Input((8, 8, 16))
    x = keras.layers.Conv2D(32, 3, padding="same", groups=8, name="grouped")(inputs)
    x = SqueezeExcite(4, name="se")(x)
    x = keras.layers.Conv2D(8, 1, groups=4, use_bias=False, name="grouped_1x1")(x)
    return keras.Model(inputs, x, name="grouped_toy")


def test_grouped_convolutions_convert_to_builtin_conv2d(tmp_path):
    model = _grouped_toy()
    x = np.random.default_rng(8).normal(size=(2, 8, 8, 16)).astype("float32")
    path = export_tflite(model, tmp_path / "grouped.tflite")
    assert "CONV_2D" in _tflite_ops(path)
    np.testing.assert_allclose(run_tflite(path, x), model(x), atol=1e-4)


def test_ungroup_convolutions_is_the_same_function():
    model = _grouped_toy()
    dense = ungroup_convolutions(model)
    assert dense.get_layer("grouped").groups == 1
    assert dense.get_layer("grouped").kernel.shape == (3, 3, 16, 32)
    assert dense.get_layer("grouped_1x1").kernel.shape == (1, 1, 32, 8)
    x = np.random.default_rng(9).normal(size=(2, 8, 8, 16)).astype("float32")
    np.testing.assert_allclose(dense(x), model(x), atol=1e-5)
    # Off-diagonal blocks are zero: group 0's outputs ignore group 1's inputs.
    kernel = keras.ops.convert_to_numpy(dense.get_layer("grouped").kernel)
    assert not kernel[:, :, 2:, :4].any() and kernel[:, :, :2, :4].any()


@pytest.mark.slow
def test_se_resnet50_tflite_float(tmp_path):
    model = _logits_model("se_resnet50")
    path = export_tflite(model, tmp_path / "se_resnet50.tflite")
    x = _images(2, seed=10)
    _assert_close_relative(run_tflite(path, x), model(x))
    assert not any(op.startswith("Flex") for op in _tflite_ops(path))


def test_export_arguments_are_checked(tmp_path):
    model = create_model("se_resnet18", include_top=False)
    with pytest.raises(ValueError, match="fixed input size"):
        export_tflite(model, tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="'.tflite'"):
        export_tflite(model, tmp_path / "m.bin", input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="quantization"):
        export_tflite(model, tmp_path / "m.tflite", quantization="int4")
    with pytest.raises(ValueError, match="representative_data"):
        export_tflite(
            model, tmp_path / "m.tflite", quantization="int8", input_shape=(64, 64, 3)
        )
    with pytest.raises(ValueError, match="'.onnx'"):
        export_onnx(model, tmp_path / "m.bin", input_shape=(64, 64, 3))
    assert os.listdir(tmp_path) == []


def test_onnx_export_matches_keras(tmp_path):
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _logits_model("se_resnet18")
    path = export_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(path)
    x = _images(2, seed=11)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(out, model(x), atol=1e-4)


def test_onnx_without_its_packages_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name in ("tf2onnx", "onnx") else real(name, *a),
    )
    model = _logits_model("se_resnet18")
    with pytest.raises(ImportError, match=r"keras-senet\[onnx\]"):
        export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_exports_are_readable_by_other_users(se_resnet18_tflite, tmp_path):
    """Exports get the permissions of open() / makedirs (umask), not 0600."""
    model, float_path, _ = se_resnet18_tflite
    assert os.stat(float_path).st_mode & 0o777 == 0o777 & 0o666 & ~_umask()
    previous = os.umask(0o027)
    try:
        path = export_saved_model(model, tmp_path / "served")
        tflite = export_tflite(model, tmp_path / "m.tflite")
    finally:
        os.umask(previous)
    assert os.stat(path).st_mode & 0o777 == 0o750
    assert os.stat(tflite).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "served"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
