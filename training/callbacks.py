"""Callbacks and file helpers of the trainer: step checkpoints, atomic files.

`StepCheckpoint` saves the model's weights together with the optimiser's
state (momentum, iteration count, loss scale) every ``save_freq`` steps and
at the end of every epoch, as ``ckpt-<step>.weights.h5`` files that appear
only once complete (written to a temporary name in the same directory, then
renamed). `restore_latest` loads the newest readable one back and returns
its step; a damaged file is reported and skipped, never half-used.
"""

import json
import os
import re
import tempfile
import warnings

import h5py
import keras

_CKPT_RE = re.compile(r"^ckpt-(\d+)\.weights\.h5$")


def atomic_path(target):
    """A fresh temporary path beside ``target`` with the same suffix."""
    directory, name = os.path.split(os.path.abspath(target))
    suffix = ".keras" if name.endswith(".keras") else name[name.find(".") :]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    return tmp


def replace_atomically(write, target):
    """Calls ``write(tmp_path)`` then renames the result onto ``target``."""
    tmp = atomic_path(target)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(data, target):
    """Writes ``data`` as JSON to ``target`` atomically."""

    def write(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    replace_atomically(write, target)


def list_checkpoints(directory):
    """``[(step, path)]`` of the complete checkpoints, newest first."""
    if not directory or not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _CKPT_RE.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found, reverse=True)


def restore_latest(model, directory):
    """Loads the newest readable checkpoint of ``directory`` into ``model``.

    The model must be compiled; its optimiser is built first so that its
    state is restored too. Returns the checkpoint's step (0 if none).
    """
    checkpoints = list_checkpoints(directory)
    if checkpoints and model.optimizer is not None:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    for step, path in checkpoints:
        try:
            with h5py.File(path, "r"):
                pass
            model.load_weights(path)
        except Exception as e:  # a damaged file: try the one before
            warnings.warn(
                f"Checkpoint {path} is unreadable and is ignored ({e}).",
                stacklevel=2,
            )
            continue
        return step
    return 0


class StepCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimiser state every ``save_freq`` steps and epoch.

    Args:
        directory: where the ``ckpt-<step>.weights.h5`` files go.
        save_freq: steps between saves (the end of each epoch also saves).
        initial_step: the global step training starts from (on resume).
        keep: how many checkpoints to keep.

    ``step`` is the global step (batches trained since the start of the
    run), also across several ``fit`` calls that share this callback.
    """

    def __init__(self, directory, save_freq, initial_step=0, keep=2):
        super().__init__()
        if int(save_freq) < 1:
            raise ValueError(
                "`save_freq` must be a positive number of steps. "
                f"Received: save_freq={save_freq!r}"
            )
        self.directory = directory
        self.save_freq = int(save_freq)
        self.keep = max(1, int(keep))
        self.step = int(initial_step)
        self._epoch_base = self.step
        self._saved_step = self.step
        os.makedirs(directory, exist_ok=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_base = self.step

    def on_train_batch_end(self, batch, logs=None):
        previous = self.step
        self.step = self._epoch_base + batch + 1
        if self.step // self.save_freq > previous // self.save_freq:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        if self.step != self._saved_step:
            self.save()

    def save(self):
        target = os.path.join(self.directory, f"ckpt-{self.step:09d}.weights.h5")
        replace_atomically(
            lambda path: self.model.save_weights(path, overwrite=True), target
        )
        self._saved_step = self.step
        for _, old in list_checkpoints(self.directory)[self.keep :]:
            os.remove(old)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimiser's current learning rate to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )
