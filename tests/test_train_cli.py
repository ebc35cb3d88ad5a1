"""The training command lines, in process: one-line answers to user
mistakes (exit code 2, no traceback, no directory left behind), their help,
the recipe and weights they pick from the data, and a diverged run (exit
code 1, nothing non-finite written, the good checkpoints kept).
"""

import argparse
import json
import re
import sys

import h5py
import numpy as np
import pytest

from training import callbacks as cb
from training import cli
from training import data
from training import evaluate
from training import predict
from training import train


def _user_error(capsys, main, argv):
    """Runs ``main(argv)``, which must exit 2 with one line on stderr."""
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--steps-per-epoch", "0"),
        ("--eval-every", "0"),
        ("--steps-per-execution", "0"),
        ("--save-every", "0"),
        ("--batch-size", "-4"),
        ("--epochs", "0"),
        ("--absolute-lr", "nan"),
        ("--absolute-lr", "-0.1"),
        ("--lr", "inf"),
        ("--weight-decay", "nan"),
    ],
)
def test_bad_numbers_are_refused_naming_the_flag(capsys, flag, value):
    err = _user_error(capsys, train.main, [flag, value])
    assert f"argument {flag}: must be" in err
    assert f"Received: {value!r}" in err


def test_user_errors_leave_no_directory(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    common = ["--model-dir", str(run_dir), "--epochs", "1"]
    err = _user_error(capsys, train.main, [*common, "--model", "se_resnet19"])
    assert "se_resnet19" in err and "Unknown model" in err
    err = _user_error(capsys, train.main,
                      [*common, "--data", str(tmp_path / "missing")])
    assert "missing" in err
    err = _user_error(
        capsys, train.main,
        [*common, "--weights", str(tmp_path / "none.weights.h5")],
    )
    assert "No file at weights=" in err
    # The digits demo without scikit-learn: the extra to install.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    err = _user_error(capsys, train.main, common)
    assert 'pip install "keras-senet[demo]"' in err
    assert not run_dir.exists()


def test_a_directory_with_another_run_is_refused_naming_the_settings(
    tmp_path, capsys
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    previous = {"model": "se_resnet34", "data": "demo", "epochs": 1,
                "recipe": {"lr_per_256": 0.8, "weight_decay": 1e-3}}
    cb.write_json(previous, run_dir / "run.json")
    cb.write_json({"steps": 3}, run_dir / "summary.json")
    before = sorted(p.name for p in run_dir.iterdir())
    err = _user_error(capsys, train.main,
                      ["--model-dir", str(run_dir), "--epochs", "1"])
    assert "other settings" in err
    assert "model (--model) 'se_resnet34' -> 'se_resnet18'" in err
    assert "recipe.weight_decay (--weight-decay) 0.001 -> 5e-05" in err
    assert "lr_per_256" not in err  # unchanged
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_help_shows_each_default_once_and_explains_every_choice():
    for parser in (train.build_parser(), evaluate.build_parser(),
                   predict.build_parser()):
        text = parser.format_help()
        assert "(default: None)" not in text
        assert not re.search(r"\(default: [^)]*\)\s*\(default:", text), text
    actions = {
        (name, a.dest): a
        for name, parser in (("train", train.build_parser()),
                             ("evaluate", evaluate.build_parser()))
        for a in parser._actions
    }
    for key in [("train", "recipe"), ("train", "precision"),
                ("train", "strategy"), ("train", "strict"),
                ("train", "weights"), ("train", "freeze_epochs"),
                ("evaluate", "data"), ("evaluate", "split")]:
        assert actions[key].help, key
    text = train.build_parser().format_help()
    assert "(default: 500)" in text  # a real default is still shown
    assert train.build_parser().parse_args(["--strict"]).strict


def _folder(root, classes):
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            (root / split / name / "0.jpg").write_bytes(b"")
    return str(root)


def _args(*argv):
    return train.build_parser().parse_args(list(argv))


def test_the_recipe_fits_the_data(tmp_path):
    folder = _folder(tmp_path / "photos", ["cat", "dog"])
    info = data.describe(folder)
    recipe = train.resolve_recipe(_args("--data", folder), info)
    # One's own images: a pretrained backbone, not the digits demo, at the
    # model's own input size.
    assert recipe.name == "finetune" and recipe.weights == "imagenet"
    assert "digits" not in recipe.description
    assert recipe.image_size == 224 and recipe.model == "se_resnet50"
    recipe = train.resolve_recipe(
        _args("--data", folder, "--model", "se_resnet18", "--weights", "none"),
        info,
    )
    assert (recipe.model, recipe.weights, recipe.image_size) == (
        "se_resnet18", None, 224)
    demo = train.resolve_recipe(_args(), data.DatasetInfo(10, 1, 1, None))
    assert demo.name == "demo" and demo.image_size == 32 and demo.weights is None
    imagenet = data.DatasetInfo(1000, None, None, None)
    assert train.resolve_recipe(
        _args("--data", "imagenet2012"), imagenet).name == "paper"
    explicit = train.resolve_recipe(
        _args("--data", folder, "--recipe", "nvidia"), info)
    assert explicit.name == "nvidia"


def test_weights_flag_names_published_checkpoints_as_model_tags():
    names = ["se_resnet18", "seresnet50"]
    assert cli.split_weights(None, "seresnet50.a1_in1k", names) == (
        "seresnet50.a1_in1k", "imagenet")
    assert cli.split_weights("seresnet50", "a1_in1k", names) == (
        "seresnet50.a1_in1k", "imagenet")
    assert cli.split_weights("se_resnet18", "imagenet", names) == (
        "se_resnet18", "imagenet")
    assert cli.split_weights("se_resnet18", "NONE", names) == ("se_resnet18", None)
    assert cli.split_weights("x", "runs/a/model.weights.h5", names) == (
        "x", "runs/a/model.weights.h5")
    with pytest.raises(ValueError, match="checkpoint of model 'seresnet50'"):
        cli.split_weights("se_resnet18", "seresnet50.a1_in1k", names)


def test_evaluate_and_predict_user_errors(tmp_path, capsys):
    lone = tmp_path / "lone.weights.h5"
    lone.write_bytes(b"\x89HDF")
    err = _user_error(capsys, evaluate.main, ["--weights", str(lone)])
    assert "--model is required" in err and "--model NAME" in err
    err = _user_error(capsys, evaluate.main, [
        "--weights", str(tmp_path / "missing.weights.h5"), "--model",
        "se_resnet18", "--data", "demo"])
    assert "No file at" in err
    err = _user_error(capsys, predict.main,
                      ["x.jpg", "--model-dir", str(tmp_path)])
    assert "no finished training run" in err
    # Published weights are evaluated with their own transform (here the
    # bare name; a name.tag goes through the same input_config call).
    published = evaluate.eval_transform("se_resnet18", "imagenet")
    assert (published.interpolation, published.image_size) == ("bicubic", 224)
    own = evaluate.eval_transform("se_resnet18", str(lone))
    assert (own.interpolation, own.crop_pct) == ("bilinear", 0.875)


def test_cli_types_and_formatter_alone():
    parser = cli.ArgumentParser(prog="p")
    parser.add_argument("--n", type=cli.positive_int, default=3, help="count")
    parser.add_argument("--x", help="thing (default: computed)")
    text = parser.format_help()
    assert "count (default: 3)" in text
    assert "thing (default: computed)" in text and "None" not in text
    with pytest.raises(argparse.ArgumentTypeError, match="Received: '1.5'"):
        cli.positive_int("1.5")
    assert cli.nonnegative_float("0") == 0.0


def _finite_arrays(path):
    with h5py.File(path, "r") as f:
        arrays = []
        f.visititems(lambda n, o: arrays.append(o[()])
                     if isinstance(o, h5py.Dataset) else None)
    return [a for a in arrays if a.dtype.kind == "f"]


def test_a_diverged_run_stops_and_keeps_its_good_checkpoints(tmp_path, capsys):
    run_dir = tmp_path / "run"
    err = None
    with pytest.raises(SystemExit) as error:
        train.main([
            "--epochs", "1", "--steps-per-epoch", "8", "--batch-size", "16",
            "--save-every", "1", "--absolute-lr", "1e5", "--warmup-epochs",
            "0", "--seed", "0", "--model-dir", str(run_dir),
        ])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()[-1]
    assert error.value.code == 1, captured.err[-2000:]
    match = re.search(r"(loss|weights) became (nan|inf|non-finite).* at step "
                      r"(\d+) of 8", err)
    assert match, err
    step = int(match.group(3))
    # Nothing non-finite was written; the good checkpoints (the last two
    # before the divergence) are still there.
    assert not {"model.keras", "model.weights.h5", "summary.json"} & {
        p.name for p in run_dir.iterdir()}
    kept = cb.list_checkpoints(str(run_dir / "backup"))
    assert kept and [s for s, _ in kept] == list(range(step - 1, 0, -1))[:2]
    assert f"last good checkpoint is step {kept[0][0]}" in err
    for _, path in kept:
        assert all(np.isfinite(a).all() for a in _finite_arrays(path)), path
    assert "━" not in captured.out and "\x1b[" not in captured.out
    assert not (run_dir / ".lock").exists()
    json.loads((run_dir / "run.json").read_text())


def test_strict_reaches_both_pipelines(monkeypatch):
    import tensorflow as tf

    from training import distribute
    from training import recipes

    calls = []

    def build_dataset(data_name, split, **kwargs):
        calls.append((split, kwargs["strict"]))
        return tf.data.Dataset.from_tensors(
            (tf.zeros((2, 32, 32, 3)), tf.zeros((2,), tf.int32))
        )

    monkeypatch.setattr(data, "build_dataset", build_dataset)
    runtime = distribute.make_runtime(distribute.create_strategy("one_device"), 2)
    for flag in ([], ["--strict"]):
        calls.clear()
        train_for, _ = train.make_datasets(
            _args(*flag), recipes.get_recipe("demo"), runtime, 10, seed=0
        )
        train_for(0)
        assert sorted(calls) == [("train", bool(flag)), ("validation", bool(flag))]
