"""Callbacks and file helpers of the trainer: step checkpoints, atomic files.

`StepCheckpoint` saves the model's weights together with the optimiser's
state (momentum, iteration count, loss scale) every ``save_freq`` steps, at
the end of every epoch and when the process is asked to stop (SIGTERM, see
`StopSignal`), as ``ckpt-<step>.weights.h5`` files that appear only once
complete (written to a temporary name in the same directory, then renamed).
It never writes a non-finite state: a training loss that is NaN or infinite,
or any weight or optimiser variable that is, stops training with `Diverged`
and leaves the last good checkpoints in place. `restore_latest` loads the
newest readable one back and returns its step; a damaged file is reported
and skipped, never half-used.

Every file goes through `replace_atomically`: written beside its target
under a temporary name, given the permissions ``open()`` would give it
(``0o666 & ~umask``), then renamed over the target. A failed write (a full
disk) removes the temporary file, leaves the target as it was and raises
`OutputError`.
"""

import contextlib
import gc
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import warnings

import h5py
import keras
import numpy as np

_CKPT_RE = re.compile(r"^ckpt-(\d+)\.weights\.h5$")
# Exit status of a run stopped by SIGTERM: the shell's 128 + signal number.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class TrainingStopped(RuntimeError):
    """Training stopped for a reason that is not a bug; `exit_code` says how
    the command line exits (its message is the one line it prints)."""

    exit_code = 1


class Diverged(TrainingStopped):
    """The loss or the weights became NaN or infinite."""


class Preempted(TrainingStopped):
    """A stop signal (SIGTERM) arrived; a checkpoint holds the last step."""

    exit_code = PREEMPTED_EXIT_CODE


class OutputError(TrainingStopped):
    """A file could not be written (disk full, no permission, ...)."""


# ------------------------------------------------------------------ files


def file_mode():
    """The mode ``open()`` gives a new file here: ``0o666 & ~umask``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # no /proc: read it by setting it, then restore
    os.umask(umask)
    return 0o666 & ~umask


def atomic_path(target):
    """A fresh temporary path beside ``target`` with the same suffix."""
    directory, name = os.path.split(os.path.abspath(target))
    suffix = ".keras" if name.endswith(".keras") else name[name.find(".") :]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    return tmp


def _release_failed_file(tmp):
    """Closes what a failed writer left open on ``tmp``.

    Keras does not close its HDF5 file when a write fails, and HDF5 cannot
    close a file it cannot flush: on a full disk the file would stay open
    until interpreter exit, where HDF5 crashes trying again. Emptying the
    file first (`replace_atomically` does, while the error still holds the
    writer) gives the space back, so that closing it now succeeds.
    """
    def still_open():
        found = []
        for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
            with contextlib.suppress(Exception):
                if os.path.abspath(fid.name) == os.path.abspath(tmp):
                    found.append(fid)
        return found

    if not still_open():  # the usual case: freed with the error
        return
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None  # h5py's complaints on close
    try:
        gc.collect()  # a reference cycle may hold it (slow: only if needed)
        for fid in still_open():
            with contextlib.suppress(Exception):
                fid.close()
    finally:
        sys.unraisablehook = previous


def replace_atomically(write, target):
    """Calls ``write(tmp_path)`` then renames the result onto ``target``.

    The file gets the permissions ``open()`` would give it. If ``write``
    fails with an OSError (disk full, ...) the temporary file is removed,
    ``target`` is left as it was and `OutputError` names both.
    """
    try:
        tmp = atomic_path(target)
    except OSError as e:
        raise OutputError(f"Cannot write {target}: {_reason(e)}.") from None
    reason = None
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    except OSError as e:
        reason = _reason(e)
        # Before `e` (whose traceback holds the writer's open file) goes.
        with contextlib.suppress(OSError):
            os.truncate(tmp, 0)
    finally:
        if reason is not None:
            _release_failed_file(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    if reason is not None:
        raise OutputError(
            f"Cannot write {target} ({reason}); the previous version of it, "
            "if any, is intact."
        )


def _reason(error):
    """What went wrong, in a few words (h5py's messages span lines)."""
    if getattr(error, "errno", None):
        return os.strerror(error.errno)
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _finite_or_none(value):
    """``value`` with every non-finite float replaced by None (valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(data, target):
    """Writes ``data`` as strict JSON to ``target`` atomically (NaN and
    infinities become null)."""

    def write(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(
                _finite_or_none(data), f, indent=2, sort_keys=True, allow_nan=False
            )
            f.write("\n")

    replace_atomically(write, target)


def read_json(path, kind=dict):
    """The JSON value of type ``kind`` in ``path``; None if it is missing,
    unreadable or of another type."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, kind) else None


# ------------------------------------------------------------ checkpoints


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


def first_non_finite(model):
    """The path of the first weight or optimiser variable of ``model`` that
    holds a NaN or an infinity, or None if all are finite."""
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    for variable in variables:
        value = keras.ops.convert_to_numpy(variable)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return variable.path
    return None


def _is_finite(value):
    try:
        return bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64))))
    except (TypeError, ValueError):
        return True  # not a number: nothing to judge


class StopSignal:
    """Turns SIGTERM into a request that `StepCheckpoint` honours.

    Schedulers and Kubernetes send SIGTERM some seconds before they kill a
    job. While this context manager is active the signal only records the
    request (``signum``); the checkpointer then saves the current step and
    raises `Preempted` at the next step boundary, so the job exits cleanly
    and a rerun resumes from that step. Outside the main thread (where
    Python cannot install handlers) it does nothing.
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


class StepCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimiser state every ``save_freq`` steps and epoch.

    Args:
        directory: where the ``ckpt-<step>.weights.h5`` files go.
        save_freq: steps between saves (the end of each epoch also saves).
        initial_step: the global step training starts from (on resume).
        keep: how many checkpoints to keep.
        stop_signal: a `StopSignal`; when it has fired, the current step is
            saved and `Preempted` raised at the next step boundary (also
            during validation and evaluation with this callback).
        total_steps: the run's length, for messages.

    ``step`` is the global step (batches trained since the start of the
    run), also across several ``fit`` calls that share this callback. A
    non-finite training loss raises `Diverged` naming the step; so does a
    non-finite weight or optimiser variable found when saving, before
    anything is written.
    """

    def __init__(self, directory, save_freq, initial_step=0, keep=2,
                 stop_signal=None, total_steps=None):
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
        self.stop_signal = stop_signal
        self.total_steps = total_steps
        self._epoch_base = self.step
        self._saved_step = self.step
        os.makedirs(directory, exist_ok=True)

    def _of_total(self):
        return f" of {self.total_steps}" if self.total_steps else ""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_base = self.step

    def on_train_batch_end(self, batch, logs=None):
        previous = self.step
        self.step = self._epoch_base + batch + 1
        loss = (logs or {}).get("loss")
        if loss is not None and not _is_finite(loss):
            raise Diverged(
                f"The training loss became {float(np.mean(loss))} at step "
                f"{self.step}{self._of_total()}: training stopped and nothing "
                f"from it was saved. {self.last_good()} Lower the learning "
                "rate (--lr / --absolute-lr) and train into a new --model-dir."
            )
        if self.step // self.save_freq > previous // self.save_freq:
            self.save()
        self.check_stop()

    def on_test_batch_end(self, batch, logs=None):
        self.check_stop()

    def on_epoch_end(self, epoch, logs=None):
        if self.step != self._saved_step:
            self.save()
        self.check_stop()

    def last_good(self):
        found = list_checkpoints(self.directory)
        if not found:
            return "No checkpoint had been saved yet."
        step, path = found[0]
        return f"The last good checkpoint is step {step}: {path}."

    def check_stop(self):
        """Saves the current step and raises `Preempted` if asked to stop."""
        if self.stop_signal is None or self.stop_signal.signum is None:
            return
        name = signal.Signals(self.stop_signal.signum).name
        if self.step == 0 and not list_checkpoints(self.directory):
            raise Preempted(
                f"Stopped by {name} before the first training step; nothing "
                "to save. Run the same command again to start."
            )
        if self.step != self._saved_step:
            self.save()
        raise Preempted(
            f"Stopped by {name} (preempted) at step {self.step}"
            f"{self._of_total()}; checkpoint saved in {self.directory}. Run "
            "the same command again to resume from it."
        )

    def save(self):
        bad = first_non_finite(self.model)
        if bad is not None:
            raise Diverged(
                f"The weights became non-finite (NaN or infinite, first in "
                f"{bad}) at step {self.step}{self._of_total()}: this state was "
                f"not saved. {self.last_good()} Lower the learning rate "
                "(--lr / --absolute-lr) and train into a new --model-dir."
            )
        target = os.path.join(self.directory, f"ckpt-{self.step:09d}.weights.h5")
        try:
            replace_atomically(
                lambda path: self.model.save_weights(path, overwrite=True),
                target,
            )
        except OutputError as e:
            raise OutputError(
                f"{e} {self.last_good()} Make room (or fix the directory) and "
                "run the same command again: it resumes from the last "
                "checkpoint."
            ) from None
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
