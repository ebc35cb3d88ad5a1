"""The main paths with the package's runtime dependencies alone.

CI runs the files marked `runtime` a second time in a virtual environment
made from ``pip install -e ".[demo]" pytest`` (no torch, timm, PIL,
matplotlib...): a dependency that only a test extra happens to provide
shows up there (tensorflow-datasets' undeclared importlib_resources did).
Here they also run in the full test environment, except the demo commands,
which test_train_runs.py and test_finetune.py run there.
"""

import importlib.util
import json
import os
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_senet
from keras_senet import convert

pytestmark = pytest.mark.runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )


def test_imagenet_not_prepared_is_one_line(tmp_path):
    """The README's ImageNet command on a machine without the archives: one
    line saying where they go, exit 2 (it crashed with ModuleNotFoundError
    in a fresh '.[demo]' install before importlib_resources was declared)."""
    result = _run(
        "training.train", "--data", "imagenet2012", "--data-dir", str(tmp_path / "tfds"),
        "--recipe", "paper", "--model", "se_resnet18", "--steps-per-epoch", "10",
        "--model-dir", str(tmp_path / "run"), cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "not prepared" in result.stderr and "ILSVRC2012_img_train.tar" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is not None,
    reason="the full test environment runs these commands in test_train_runs.py "
    "(the main job) and test_finetune.py (evaluate, predict); CI runs this "
    "test in the runtime-only environment",
)
def test_demo_train_then_evaluate_and_predict(tmp_path):
    run = tmp_path / "run"
    result = _run(
        "training.train", "--epochs", "1", "--steps-per-epoch", "3",
        "--model-dir", str(run), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["model"] == "se_resnet18"
    assert (run / "model.keras").is_file() and (run / "classes.json").is_file()
    result = _run("training.evaluate", "--weights", str(run / "model.weights.h5"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top-1" in result.stdout
    image = tmp_path / "digit.png"
    import tensorflow as tf

    tf.io.write_file(str(image), tf.io.encode_png(np.full((32, 32, 3), 200, np.uint8)))
    result = _run("training.predict", str(image), "--model-dir", str(run), "--top-k", "2",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(image) in result.stdout


def _to_torch(array, transform):
    """The inverse of a `convert` transform (PyTorch's layout)."""
    if transform is convert.CONV_KERNEL:
        return np.transpose(array, (3, 2, 0, 1))
    if transform is convert.FC_KERNEL:
        return np.transpose(array)
    return array


def _write_safetensors(path, tensors):
    """A safetensors file written by hand (the format is a length-prefixed
    JSON header, then the raw little-endian data)."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_a_checkpoint_file_loads_without_torch(tmp_path):
    """A timm-layout .safetensors file through weights=<path>: the
    torch-free reader, the mapping and the builder, as a user runs them."""
    keras.utils.set_random_seed(1)
    source = keras_senet.create_model(
        "seresnext26d_32x4d", input_shape=(64, 64, 3), classes=1000,
        classifier_activation=None,
    )
    tensors = {}
    name_of = convert.LAYOUTS["timm"]
    # A "d" model's shortcuts start with a pool: (pool, conv, bn) in timm.
    avg_down = any(layer.name.endswith("_0_pool") for layer in source.layers)
    assert avg_down
    for layer in source.layers:
        if layer.weights:
            prefix = name_of(layer.name, avg_down=avg_down)
            for variable, key, transform in convert._layer_targets(layer, prefix):
                tensors[key] = _to_torch(keras.ops.convert_to_numpy(variable), transform)
    path = tmp_path / "model.safetensors"
    _write_safetensors(path, tensors)
    loaded = keras_senet.create_model(
        "seresnext26d_32x4d", weights=str(path), input_shape=(64, 64, 3),
        classifier_activation=None,
    )
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), source.predict(x, verbose=0),
                               atol=1e-5)
