"""The README's commands and code run as written.

- Every ``python`` block is executed, in order, in a fresh namespace inside a
  temporary directory. The names a snippet leaves to the reader
  (``NUM_CLASSES``, ``train_ds``, ``val_ds``, ``images``, ``labels``,
  ``model``) are given small stand-ins when the snippet does not define them
  itself. Published weights are not downloaded (no network in tests): the
  loader is replaced by one that records what was asked for and leaves the
  weights random; the loading itself is tested against timm through a local
  server in test_weights.py, test_timm_arch.py and test_pretrained.py.
- Every ``python -m`` command in a ``bash`` block is parsed by its own
  command-line parser (the module's ``main`` is called and stopped right
  after its arguments are parsed): a flag or subcommand the README shows
  that does not exist fails here. The commands that run offline are run for
  real elsewhere (the demo training, evaluation, prediction: test_train.py,
  test_runtime_env.py; ``zoo list``: test_zoo.py).
"""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _blocks(language):
    return [m.group(2) for m in _BLOCK.finditer(README.read_text()) if m.group(1) == language]


def _commands():
    """``(module, argv)`` of every ``python -m`` command in the bash blocks."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line):
                words = shlex.split(part, comments=True)
                while words and _ENV_ASSIGNMENT.match(words[0]):
                    words.pop(0)
                if words[:2] == ["python", "-m"] and len(words) > 2:
                    commands.append((words[2], words[3:]))
    return commands


def test_the_readme_has_what_this_test_reads():
    modules = {module for module, _ in _commands()}
    assert {"training.train", "training.evaluate", "training.predict", "pytest",
            "keras_senet.zoo", "weights.convert"} <= modules
    assert len(_blocks("python")) >= 6


class _Parsed(Exception):
    pass


@pytest.mark.parametrize(
    "module, argv",
    [c for c in _commands() if c[0] != "pytest"],
    ids=lambda value: value if isinstance(value, str) else " ".join(value)[:60],
)
def test_readme_command_parses(module, argv, monkeypatch):
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    main = importlib.import_module(module).main
    with pytest.raises(_Parsed) as parsed:
        main(list(argv))
    assert isinstance(parsed.value.args[0], argparse.Namespace)


@pytest.fixture
def no_downloads(monkeypatch):
    """Published weights stay random; what was asked for is recorded."""
    from keras_senet import pretrained

    asked = []

    def load(model, *, record=None, path=None, layout=None, reference):
        asked.append(record.name if record is not None else path)
        return model

    monkeypatch.setattr(pretrained, "load", load)
    monkeypatch.setenv("KERAS_SENET_OFFLINE", "1")
    return asked


def _stand_ins():
    import tensorflow as tf

    import keras_senet

    rng = np.random.default_rng(0)
    images = keras_senet.preprocess_input(rng.uniform(0, 255, (4, 32, 32, 3)))
    labels = np.array([0, 1, 0, 1])
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    model = keras_senet.create_model("se_resnet18", weights=None,
                                     input_shape=(32, 32, 3), classes=2)
    return dict(NUM_CLASSES=2, train_ds=ds, val_ds=ds, images=images,
                labels=labels, model=model)


@pytest.mark.slow
def test_readme_python_blocks_run(no_downloads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stand_ins = _stand_ins()
    for index, block in enumerate(_blocks("python")):
        namespace = {"__name__": f"readme_block_{index}"}
        code = compile(block, f"README.md python block {index}", "exec")
        for name, value in stand_ins.items():
            if name in code.co_names and not re.search(
                rf"^\s*{name}\s*=|^import.*\b{name}\b|^from .* import .*\b{name}\b",
                block, re.M,
            ):
                namespace[name] = value
        exec(code, namespace)
    # Every "imagenet" / tag the snippets ask for reached the loader.
    assert "se_resnet50.in1k" in no_downloads
    assert "seresnextaa101d_32x8d.sw_in12k_ft_in1k_288" in no_downloads
    assert (tmp_path / "gates.png").stat().st_size > 0
    assert (tmp_path / "model.onnx").stat().st_size > 0
