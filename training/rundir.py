"""One training at a time per ``--model-dir``: `RunDirLock`.

Two trainings writing into one directory interleave their checkpoints and
their ``history.csv`` and both report success. The trainer therefore holds an
exclusive `fcntl.flock` on ``<model_dir>/.lock`` for the whole run; a second
one refuses at once, naming the directory and the process that holds it (pid,
host and start time, which the holder writes into the file). The kernel
releases the lock when its process ends, however it ends (a SIGKILLed or
crashed run leaves no stale lock). In a multi-worker job only the chief
takes it: the other workers share the directory.

``flock`` works across hosts on NFSv4 and most cluster file systems; on one
without locking the lock only guards against runs on the same host.
"""

import os
import socket
import time

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None

LOCK_NAME = ".lock"


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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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
