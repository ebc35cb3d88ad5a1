"""The run directory (``--model-dir``): one training at a time, and only
a run with the same settings may resume from what it holds.

`check_resumable` compares the settings a run recorded in ``run.json`` with
the new command's and refuses, naming each changed setting and its flag,
when any that changes the result differs (`RESUME_KEYS` and the recipe's
fields).

`RunDirLock`: two trainings writing into one directory interleave their
checkpoints and their ``history.csv`` and both report success. The trainer
therefore holds an exclusive `fcntl.flock` on ``<model_dir>/.lock`` for the whole run; a second
one refuses at once, naming the directory and the process that holds it (pid,
host and start time, which the holder writes into the file). The kernel
releases the lock when its process ends, however it ends (a SIGKILLed or
crashed run leaves no stale lock). In a multi-worker job only the chief
takes it: the other workers share the directory.

``flock`` works across hosts on NFSv4 and most cluster file systems; on one
without locking the lock only guards against runs on the same host.
"""

import json
import os
import socket
import time

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None

LOCK_NAME = ".lock"

# What run.json must agree on for a run to resume: everything that changes
# what training computes. (How often it checkpoints, validates or logs, XLA,
# steps per execution and the device count change how, not what.)
RESUME_KEYS = (
    "model", "data", "classes", "global_batch_size", "steps_per_epoch",
    "epochs", "learning_rate", "recipe", "precision", "sync_bn", "seed",
    "deterministic",
)
# Recipe fields not compared: descriptions, and those compared as settings
# above (model, epochs, the global batch size).
_RECIPE_NOT_COMPARED = ("name", "description", "model", "epochs", "batch_size")
# The flag that sets each compared setting (others: --recipe).
_FLAGS = {
    "model": "--model", "data": "--data", "classes": "--data",
    "global_batch_size": "--batch-size", "steps_per_epoch": "--steps-per-epoch",
    "epochs": "--epochs", "learning_rate": "--lr/--absolute-lr",
    "precision": "--precision", "sync_bn": "--sync-bn", "seed": "--seed",
    "deterministic": "--deterministic",
    "recipe.image_size": "--image-size", "recipe.lr_per_256": "--lr",
    "recipe.schedule": "--schedule", "recipe.warmup_epochs": "--warmup-epochs",
    "recipe.weight_decay": "--weight-decay",
    "recipe.label_smoothing": "--label-smoothing",
    "recipe.momentum": "--momentum", "recipe.weights": "--weights",
    "recipe.freeze_epochs": "--freeze-epochs",
}


def _comparable(value):
    return json.loads(json.dumps(value))  # tuples -> lists, as in run.json


def _changes(previous, now, keys, prefix=""):
    changed = {}
    for key in keys:
        if key not in previous or key not in now:
            continue
        old, new = previous[key], now[key]
        if isinstance(old, dict) and isinstance(new, dict):
            inner = [k for k in new if k not in _RECIPE_NOT_COMPARED]
            changed.update(_changes(old, new, inner, f"{prefix}{key}."))
        elif old != new:
            changed[prefix + key] = (old, new)
    return changed


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_resumable(run_file, run_info):
    """Refuses to resume a run whose settings changed (those that change
    the result: `RESUME_KEYS`, the recipe's fields included), naming each
    with its flag."""
    try:
        with open(run_file, encoding="utf-8") as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return
    if not isinstance(previous, dict):
        return
    changed = _changes(previous, _comparable(run_info), RESUME_KEYS)
    if changed:
        listed = "; ".join(
            f"{key} ({_FLAGS.get(key, '--recipe')}) {_short(old)} -> "
            f"{_short(new)}"
            for key, (old, new) in sorted(changed.items())
        )
        raise ValueError(
            f"--model-dir {os.path.dirname(run_file)!r} holds a run with "
            f"other settings, so it cannot resume: {listed} (previous -> "
            "now). Use another --model-dir, or the same settings to resume."
        )


def tree_size(directory):
    """Bytes in the files under ``directory``."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


class RunDirLock:
    """An exclusive, non-blocking lock on a run directory.

    `acquire` raises ValueError (a user error: pick another directory or
    wait) when another process holds it. The lock file is removed on
    `release`, while still locked, so a process that opened it just before
    checks, once it holds the lock, that its file is still the one in place.
    """

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_NAME)
        self._fd = None

    @property
    def held(self):
        return self._fd is not None

    def acquire(self):
        if self._fd is not None:
            return self
        if fcntl is None:  # pragma: no cover
            self._fd = -1
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise ValueError(
                    f"Cannot write to --model-dir {self.directory!r} "
                    f"({e.strerror or e}): use a directory you can write to."
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ValueError(
                    f"--model-dir {self.directory!r} is in use by another "
                    f"training ({holder}). Wait for it to finish, or use "
                    "another --model-dir."
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = _same_file(fd, self.path)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder removed it as we opened it: again
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} on host {socket.gethostname()}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode(),
        )
        self._fd = fd
        return self

    def release(self):
        fd, self._fd = self._fd, None
        if fd is None or fd == -1:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass
        os.close(fd)  # releases the lock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _same_file(fd, path):
    held, current = os.fstat(fd), os.stat(path)
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)


def _read_holder(fd):
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not said who it is yet"
