"""Excitation analysis: recorded gates, per-class means, plot, CLI."""

import os
import sys

import keras
import numpy as np
import pytest

from keras_senet import create_model
from keras_senet import layers as se_layers
from keras_senet import preprocess_input
from keras_senet.analysis import _save_npz
from keras_senet.analysis import gate_model
from keras_senet.analysis import main
from keras_senet.analysis import mean_gates_by_class
from keras_senet.analysis import plot_gates
from keras_senet.analysis import record_gates

NAMES = ["conv2_block1_se", "conv5_block2_se"]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _numpy_gates(layer, feature_map):
    """The SE formula in NumPy, from the layer's own weights."""
    w1, b1, w2, b2 = (np.asarray(keras.ops.convert_to_numpy(w), "float64") for w in layer.weights)
    squeezed = np.asarray(feature_map, "float64").mean(axis=(1, 2))
    return _sigmoid(np.maximum(squeezed @ w1 + b1, 0.0) @ w2 + b2)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    model = create_model("se_resnet18", include_top=False, input_shape=(64, 64, 3))
    rng = np.random.default_rng(3)
    for layer in model.layers:  # non-zero biases, so they are checked too
        if isinstance(layer, se_layers.SqueezeExcite):
            layer.fc2.bias.assign(rng.normal(0, 1, layer.fc2.bias.shape))
    return model


def test_recorded_gates_are_the_layers_gates(model):
    images = np.random.default_rng(0).normal(size=(5, 64, 64, 3)).astype("float32")
    gates = record_gates(model, images, NAMES, batch_size=2)
    assert list(gates) == NAMES
    layers = [model.get_layer(n) for n in NAMES]
    # Each SE layer of an SE-ResNet also takes the block's shortcut and
    # returns relu(x * gates + shortcut).
    assert all(len(layer.input) == 2 for layer in layers)
    probe = keras.Model(
        model.input, [t for l in layers for t in (*l.input, l.output)]
    )
    values = [keras.ops.convert_to_numpy(v) for v in probe(images, training=False)]
    for i, layer in enumerate(layers):
        feature_map, shortcut, output = values[3 * i : 3 * i + 3]
        assert gates[layer.name].shape == (5, layer.channels)
        np.testing.assert_allclose(
            gates[layer.name], _numpy_gates(layer, feature_map), rtol=1e-4, atol=1e-6
        )
        # And they are what the layer multiplied its input by.
        expected = np.maximum(feature_map * gates[layer.name][:, None, None, :] + shortcut, 0)
        np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)
    all_gates = gate_model(model).output
    assert len(all_gates) == 8 and list(all_gates)[:1] == ["conv2_block1_se"]


def test_mean_gates_by_class():
    rng = np.random.default_rng(1)
    gates = {"a": rng.uniform(size=(6, 4)), "b": rng.uniform(size=(6, 2))}
    labels = np.array([2, 0, 2, 1, 0, 2])
    classes, means = mean_gates_by_class(gates, labels)
    assert list(classes) == [0, 1, 2]
    np.testing.assert_allclose(means["a"][0], gates["a"][[1, 4]].mean(axis=0))
    np.testing.assert_allclose(means["a"][1], gates["a"][3])
    np.testing.assert_allclose(means["b"][2], gates["b"][[0, 2, 5]].mean(axis=0))
    with pytest.raises(ValueError, match="gates\\['a'\\].*N = 5"):
        mean_gates_by_class(gates, labels[:5])


def test_unknown_layer_and_models_without_se_raise(model):
    with pytest.raises(ValueError, match="no SqueezeExcite layer named \\['conv9_se'\\]"):
        gate_model(model, ["conv9_se"])
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs), name="plain")
    with pytest.raises(ValueError, match="'plain' has no SqueezeExcite"):
        record_gates(plain, np.zeros((1, 8, 8, 3)))


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="keras-senet\\[plot\\]"):
        plot_gates({"a": np.zeros((1, 3))}, [0], tmp_path / "g.png")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(2)
    means = {"x_se": rng.uniform(size=(3, 16)), "y_se": rng.uniform(size=(3, 32))}
    path = plot_gates(means, [0, 1, 2], tmp_path / "gates.png", class_names={0: "cat"})
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["gates.png"]


def test_cli_records_per_class_means_from_an_image_folder(model, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    images = {}
    for class_name in ("cat", "dog"):
        (tmp_path / "images" / class_name).mkdir(parents=True)
        images[class_name] = []
        for i in range(2):
            pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / class_name / f"{i}.png")
            images[class_name].append(pixels.astype("float32"))
    weights = tmp_path / "m.weights.h5"
    model.save_weights(weights)
    out = tmp_path / "means.npz"
    code = main(
        [
            "--model", "se_resnet18",
            "--weights", str(weights),
            "--images", str(tmp_path / "images"),
            "--image-size", "64",
            "--layers", ",".join(NAMES),
            "--npz", str(out),
        ]
    )
    assert code == 0
    saved = np.load(out)
    assert list(saved["classes"]) == ["cat", "dog"]
    for name in NAMES:
        for row, class_name in enumerate(("cat", "dog")):
            batch = preprocess_input(np.stack(images[class_name]))
            expected = record_gates(model, batch, [name])[name].mean(axis=0)
            np.testing.assert_allclose(saved[name][row], expected, rtol=1e-4, atol=1e-6)


def test_cli_answers_user_mistakes_with_one_line(tmp_path, capsys):
    code = main(["--model", "se_resnet18", "--images", str(tmp_path / "nowhere"),
                 "--image-size", "32", "--npz", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "--images" in err and "nowhere" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code = main(["--model", "no_such_model", "--images", "demo", "--image-size", "32",
                 "--npz", str(tmp_path / "x.npz")])
    assert code == 2 and "no_such_model" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    for argv in (
        ["--model", "se_resnet18", "--images", "demo"],  # no output asked
        # Output names are checked before anything is computed.
        ["--model", "se_resnet18", "--images", "demo", "--out", str(tmp_path / "g.jpg")],
        ["--model", "se_resnet18", "--images", "demo", "--npz", str(tmp_path / "g.txt")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2


def test_cli_without_matplotlib_fails_before_computing(monkeypatch, tmp_path, capsys):
    import keras_senet.models

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(
        keras_senet.models, "create_model",
        lambda *a, **k: pytest.fail("the model was built before the check"),
    )
    code = main(["--model", "se_resnet18", "--images", "demo", "--image-size", "32",
                 "--npz", str(tmp_path / "g.npz"), "--out", str(tmp_path / "g.png")])
    assert code == 2 and "keras-senet[plot]" in capsys.readouterr().err


def test_outputs_follow_the_umask(model, tmp_path):
    pytest.importorskip("matplotlib")
    previous = os.umask(0o022)
    try:
        npz = tmp_path / "g.npz"
        _save_npz(npz, np.asarray(["a"]), {"x_se": np.zeros((1, 4))})
        png = plot_gates({"x_se": np.zeros((1, 4))}, [0], tmp_path / "g.png")
    finally:
        os.umask(previous)
    for path in (npz, png):
        assert os.stat(path).st_mode & 0o777 == 0o644, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz", "g.png"]


def test_plot_title_clears_the_first_panel_title(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib import pyplot

    figures = []
    monkeypatch.setattr(pyplot, "close", figures.append)
    # Six panels (tall figure): with tight_layout the gap shrank to ~1 px.
    means = {f"conv{i}_block1_se": np.full((10, 8), 0.5) for i in range(6)}
    plot_gates(means, list(range(10)), tmp_path / "g.png", title="se_resnet50: gates")
    (figure,) = figures
    renderer = figure.canvas.get_renderer()
    title_box = figure._suptitle.get_window_extent(renderer)
    panel_box = figure.axes[0].title.get_window_extent(renderer)
    assert not title_box.overlaps(panel_box)
    assert title_box.y0 >= panel_box.y1 + 4  # pixels of clearance
    matplotlib.pyplot.close(figure)
