"""What the command lines of `training` share: help, value checks, errors.

- `ArgumentParser` answers a mistake with one line (``prog: error: ...``)
  and exit code 2, without the many-line usage.
- `HelpFormatter` shows a flag's default once, and only when there is one.
- `positive_int`, `positive_float`, ... are argparse types: a bad value is
  refused while parsing, naming the flag and the value received.
- `user_errors(parser)` is the one way user mistakes reach the user: a
  ValueError raised while a command sets up (a missing file, an unknown
  model, a directory holding another run, ...) or an ImportError that names
  the package to install becomes the parser's error (one line, exit code
  2). What goes wrong later is a bug and keeps its traceback.
- `split_weights` reads ``--weights name.tag`` as ``--model name.tag
  --weights imagenet``.
- `data_errors` turns the input pipeline's data checks (``--strict``) into
  an error of one's choice.
"""

import argparse
import contextlib
import math
import os
import re

# Messages of the input pipeline's checks that are about the data, not bugs.
DATA_ERRORS = ("Cannot decode image file", "Label out of range")
# File names that `keras_senet.create_model(weights=...)` reads.
WEIGHT_FILE_SUFFIXES = (
    ".weights.h5", ".h5", ".keras", ".pth", ".pt", ".bin", ".safetensors",
)


class DataError(RuntimeError):
    """The input data stopped a command (see `data_errors`)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (and exit code 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help unless it has no default or its
    help already speaks of it."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if (
            action.default in (None, False, argparse.SUPPRESS)
            or "default" in help_text
            or not action.option_strings
        ):
            return help_text
        return super()._get_help_string(action)


def _number(kind, test, requirement):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or (kind is float and not math.isfinite(value)) or not test(value):
            raise argparse.ArgumentTypeError(
                f"must be {requirement}. Received: {text!r}"
            )
        return value

    parse.__name__ = f"{requirement} {kind.__name__}"
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a finite number > 0")
nonnegative_float = _number(float, lambda v: v >= 0, "a finite number >= 0")


def _one_line(error):
    return re.sub(r"\s+", " ", str(error)).strip() or type(error).__name__


@contextlib.contextmanager
def user_errors(parser):
    """Turns the user errors raised in the block into ``parser.error``."""
    try:
        yield
    except ValueError as e:
        parser.error(_one_line(e))
    except ImportError as e:
        if "pip install" not in str(e):
            raise
        parser.error(_one_line(e))


def looks_like_path(weights):
    """Whether ``weights`` names a file (rather than 'imagenet' or a tag)."""
    return (
        os.sep in weights
        or weights.endswith(WEIGHT_FILE_SUFFIXES)
        or os.path.exists(weights)
    )


def split_weights(model, weights, model_names, *, model_given=True):
    """``(model, weights)`` for the ``--model`` / ``--weights`` flags.

    Published weights are always named ``model.tag`` with ``weights=
    "imagenet"``, as `keras_senet.create_model` and
    `keras_senet.models.input_config` take them: ``--weights name.tag`` (a
    checkpoint of model ``name``, which must be in ``model_names``) means
    ``--model name.tag --weights imagenet``, and a bare tag (``--weights
    a1_in1k``) means that tag of ``model``. ``--weights none`` means no
    weights; ``imagenet`` and files are returned as given. A ``name.tag``
    of another model than an explicit (``model_given``) ``model`` is a
    ValueError.
    """
    if weights is None or weights.lower() == "none":
        return model, None
    if weights == "imagenet" or looks_like_path(weights):
        return model, weights
    if "." not in weights:  # a tag of `model`
        if model is None:
            return model, weights
        return f"{model.split('.', 1)[0]}.{weights}", "imagenet"
    name = weights.split(".", 1)[0]
    if name not in model_names:
        return model, weights  # not a checkpoint name: a missing file
    if model_given and model not in (None, name, weights):
        raise ValueError(
            f"--weights {weights!r} is a checkpoint of model {name!r}, but "
            f"--model is {model!r}. Pass one of them only."
        )
    return weights, "imagenet"


@contextlib.contextmanager
def data_errors(raise_as):
    """Re-raises the input pipeline's checks on the data (an undecodable
    file under ``strict``, a label out of range) as ``raise_as(message)``
    with the one line that names the file; other errors pass unchanged."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        lines = [
            line.strip()
            for line in str(e.message).splitlines()
            if any(marker in line for marker in DATA_ERRORS)
        ]
        if not lines:
            raise
        raise raise_as(f"Stopped by the input data: {lines[0]}") from None
