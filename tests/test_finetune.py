"""freeze_backbone: frozen weights and BN statistics survive fit(); and
fine-tuning through the training CLI (--weights, --freeze-epochs), with the
class names used by training.evaluate and training.predict."""

import json
import os

import keras
import numpy as np
import pytest

from keras_senet import create_model
from keras_senet.finetune import freeze_backbone
from keras_senet.finetune import trainable_summary
from keras_senet.finetune import unfreeze


def _model():
    keras.utils.set_random_seed(0)
    return create_model("se_resnet18", input_shape=(32, 32, 3), classes=3)


def _snapshot(model):
    return {
        (layer.name, w.path): keras.ops.convert_to_numpy(w).copy()
        for layer in model.layers
        for w in layer.weights
    }


def _fit(model):
    rng = np.random.default_rng(0)
    # Not zero-mean: BN batch statistics differ from the moving ones.
    x = rng.normal(2.0, 3.0, size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=8)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        run_eagerly=True,
    )
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    return x


def _changed(before, after, predicate):
    return {
        key
        for key in before
        if predicate(key) and not np.array_equal(before[key], after[key])
    }


def test_frozen_backbone_keeps_weights_and_bn_statistics():
    model = freeze_backbone(_model())
    assert [w.path for w in model.trainable_weights] == ["logits/kernel", "logits/bias"]
    trainable, frozen = trainable_summary(model)
    assert trainable == 512 * 3 + 3
    assert trainable + frozen == model.count_params()
    before = _snapshot(model)
    x = _fit(model)
    after = _snapshot(model)
    assert _changed(before, after, lambda k: k[0] != "logits") == set()
    assert _changed(before, after, lambda k: k[0] == "logits") == {
        ("logits", "logits/kernel"),
        ("logits", "logits/bias"),
    }
    # Frozen BN runs in inference mode even when called in training mode.
    np.testing.assert_allclose(
        model(x, training=True), model(x, training=False), atol=1e-6
    )


def test_train_bn_updates_statistics_only_in_bn_layers():
    model = freeze_backbone(_model(), train_bn=True)
    before = _snapshot(model)
    _fit(model)
    after = _snapshot(model)
    bn = {l.name for l in model.layers if isinstance(l, keras.layers.BatchNormalization)}
    changed = _changed(before, after, lambda k: True)
    assert {name for name, _ in changed} - bn == {"logits"}
    assert ("conv1_bn", "conv1_bn/moving_mean") in changed
    assert ("conv1_bn", "conv1_bn/gamma") in changed


def test_head_patterns_unfreeze_the_last_stage():
    model = freeze_backbone(_model(), head=("conv5_*", "logits"))
    before = _snapshot(model)
    _fit(model)
    after = _snapshot(model)
    changed_layers = {name for name, _ in _changed(before, after, lambda k: True)}
    assert "conv5_block2_2_conv" in changed_layers
    assert "conv5_block2_se" in changed_layers
    assert not any(n.startswith(("conv1", "conv2", "conv3", "conv4")) for n in changed_layers)
    # BN stays frozen inside the unfrozen stage too (train_bn=False).
    assert not any(n.endswith("_bn") for n in changed_layers)


def test_unfreeze_undoes_freeze_backbone():
    model = _model()
    everything = len(model.trainable_weights)
    freeze_backbone(model)
    model.trainable = True  # not enough: the layers stay frozen
    assert len(model.trainable_weights) == 2
    assert unfreeze(model) is model
    assert len(model.trainable_weights) == everything
    assert model.get_layer("conv1_bn").trainable
    assert model.get_layer("conv2_block1_se").fc1.kernel.trainable
    with pytest.raises(ValueError, match="keras.Model"):
        unfreeze("se_resnet18")


def test_bad_arguments_raise_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="'conv9_\\*'"):
        freeze_backbone(model, head=("conv9_*",))
    with pytest.raises(ValueError, match="keras.Model"):
        freeze_backbone("se_resnet18")
    inputs = keras.Input((4,))
    dense = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="mlp")
    with pytest.raises(ValueError, match="'mlp'.*head"):
        freeze_backbone(dense)


# ------------------------------------- fine-tuning from the training CLI


CLASSES = ("cat", "dog", "fox")


def _write_folder(root, per_class):
    """A tiny image folder: per class, JPEGs of one grey level plus noise."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            directory = root / split / name
            directory.mkdir(parents=True)
            for i in range(count):
                image = np.full((40, 48, 3), 70 * label + 20, np.uint8)
                image += rng.integers(0, 30, image.shape, dtype=np.uint8)
                (directory / f"{i}.jpg").write_bytes(
                    tf.io.encode_jpeg(image).numpy()
                )
    return root


def _one_line_exit(capsys, main, argv):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _arrays(path):
    """The model weights of a .weights.h5 file, by HDF5 path."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: arrays.__setitem__(name, obj[()])
            if hasattr(obj, "shape") and name.startswith("layers/") else None
        )
    return arrays


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One fine-tuning run: se_resnet18 at 32 px from a 7-class weights file
    onto a 3-class folder, 2 epochs of which the first trains only the new
    classifier. Returns (run_dir, folder, source weights file)."""
    from training import train

    tmp = tmp_path_factory.mktemp("finetune")
    folder = _write_folder(tmp / "folder", {"train": 4, "val": 2})
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1)
    source = create_model("se_resnet18", input_shape=(32, 32, 3), classes=7)
    source_file = tmp / "source.weights.h5"
    source.save_weights(source_file)
    run_dir = tmp / "run"
    train.run([
        "--data", str(folder), "--model", "se_resnet18", "--weights",
        str(source_file), "--image-size", "32", "--epochs", "2",
        "--freeze-epochs", "1", "--batch-size", "4", "--save-every", "100",
        "--eval-every", "2",
        "--keep-checkpoints", "--model-dir", str(run_dir),
    ])
    return run_dir, folder, source_file


def test_finetune_loads_the_backbone_and_trains_a_new_head(finetuned):
    run_dir, folder, source_file = finetuned
    summary = json.loads((run_dir / "summary.json").read_text())
    # Image folder, no --recipe: the fine-tuning recipe, not the digits demo.
    assert summary["recipe"] == "finetune"
    assert summary["classes"] == list(CLASSES)
    assert json.loads((run_dir / "classes.json").read_text()) == list(CLASSES)
    source = _arrays(source_file)
    frozen = _arrays(run_dir / "backup" / "ckpt-000000003.weights.h5")
    final = _arrays(run_dir / "model.weights.h5")
    head = {k for k in source if source[k].shape != final[k].shape}
    # The classifier is the only new layer, sized to the folder's classes.
    assert sorted(final[k].shape for k in head) == [(3,), (512, 3)]
    assert len(source) - len(head) > 100
    # After the frozen epoch every backbone value (BatchNorm statistics
    # included) is still the source's: the weights were loaded, the
    # backbone and its BatchNorm were frozen.
    for key in source.keys() - head:
        np.testing.assert_array_equal(frozen[key], source[key], err_msg=key)
    # The classifier did train in that epoch, and after unfreezing (and
    # recompiling) the backbone trained too.
    assert not all(np.array_equal(frozen[k], final[k]) for k in head)
    changed = [k for k in source.keys() - head
               if not np.array_equal(final[k], source[k])]
    assert any("conv2d" in k for k in changed)
    assert any("batch_normalization" in k for k in changed)


def test_evaluate_and_predict_use_the_runs_classes(finetuned, tmp_path, capsys):
    from training import evaluate
    from training import predict

    run_dir, folder, _ = finetuned
    summary = json.loads((run_dir / "summary.json").read_text())
    # evaluate takes model, size, data and classes from the run.
    result = evaluate.main(["--weights", str(run_dir / "model.weights.h5")])
    assert result["top1"] == pytest.approx(summary["val_top1"], abs=1e-6)

    images = sorted(str(p) for p in (folder / "val").glob("*/*.jpg"))
    capsys.readouterr()
    results = predict.main([*images, "--model-dir", str(run_dir),
                            "--top-k", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(images) == len(results) == 6
    for path, line, top in zip(images, lines, results):
        assert line.startswith(path + ": ")
        assert [name for name, _ in top] == [
            part.rsplit(" ", 1)[0] for part in line[len(path) + 2:].split(", ")
        ]
        assert len(top) == 2 and {n for n, _ in top} <= set(CLASSES)
        assert top[0][1] >= top[1][1] and 0 < sum(p for _, p in top) <= 1
    # The predictions are the model's: accuracy as evaluate measured it.
    correct = [top[0][0] == path.split(os.sep)[-2]
               for path, top in zip(images, results)]
    assert np.mean(correct) == pytest.approx(result["top1"], abs=1e-6)

    # A bad image: one line, exit 2, nothing printed for the others.
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    for path, message in ((str(bad), "Cannot decode"),
                          (str(tmp_path / "missing.jpg"), "No image file")):
        with pytest.raises(SystemExit) as error:
            predict.main([images[0], path, "--model-dir", str(run_dir)])
        assert error.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.strip().splitlines()) == 1
        assert message in captured.err and path in captured.err

    # --strict names an undecodable file instead of skipping it.
    import shutil

    strict = tmp_path / "strict"
    shutil.copytree(folder, strict)
    broken = strict / "val" / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a JPEG")
    err = _one_line_exit(capsys, evaluate.main, [
        "--weights", str(run_dir / "model.weights.h5"), "--data", str(strict),
        "--strict"])
    assert "broken.jpg" in err

    # Data whose classes differ from the run's is refused.
    other = _write_folder(tmp_path / "other", {"val": 1})
    (other / "val" / "fox").rename(other / "val" / "wolf")
    with pytest.raises(SystemExit) as error:
        evaluate.main(["--weights", str(run_dir / "model.weights.h5"),
                       "--data", str(other)])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "trained on the classes [cat, dog, fox]" in err and "wolf" in err
