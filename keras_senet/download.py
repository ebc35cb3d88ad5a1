"""Downloading weight files into the local cache: verified, atomic, shared.

`fetch` returns the path of a verified copy of a published file, downloading
it at most once: later calls (and later processes) find it in the cache and
touch no network. Nothing unverified ever reaches its final name: a download
goes to a temporary ``.part`` file in the cache directory, is checked, and is
renamed into place atomically; on any failure the temporary file is removed.
Processes that fetch the same file at once (every rank of a distributed job)
serialise on a lock file, so the file is downloaded once.

Environment variables:

- ``KERAS_SENET_CACHE``: the cache directory. Default: ``$KERAS_HOME/models``
  when ``KERAS_HOME`` is set, else ``~/.keras/models`` (Keras' own default).
- ``KERAS_SENET_WEIGHTS_URL``: a mirror; files are then fetched from
  ``<mirror>/<filename>`` instead of their published URL (``file://`` works).
- ``KERAS_SENET_OFFLINE``: ``1``/``true`` to never touch the network; a file
  not in the cache is then an error that says where to put it.

This module uses the standard library only.
"""

import contextlib
import hashlib
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from http.client import HTTPException

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock.
    fcntl = None

CHUNK_SIZE = 1 << 20
TIMEOUT = 60  # seconds without data before a download is abandoned
USER_AGENT = "keras-senet (Python-urllib/{}.{})".format(*sys.version_info[:2])

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_HEX = re.compile(r"[0-9a-f]+")
_SNIFF_BYTES = 1024
_HTML_STARTS = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<!--")


class WeightsDownloadError(OSError):
    """A weight file could not be downloaded, verified or cached.

    A subclass of `OSError`: it reports a failure of the outside world (the
    network, the server, the file system), not of the caller's arguments,
    which raise `ValueError`. The message names the URL, the path and, where
    it applies, what was expected against what was received.
    """


def cache_dir():
    """The directory weight files are cached in, created if needed.

    ``$KERAS_SENET_CACHE`` if set, else ``$KERAS_HOME/models`` if
    ``KERAS_HOME`` is set, else ``~/.keras/models``.

    Raises:
        WeightsDownloadError: the directory cannot be created.
    """
    directory = os.environ.get("KERAS_SENET_CACHE")
    if not directory:
        keras_home = os.environ.get("KERAS_HOME")
        if keras_home:
            directory = os.path.join(keras_home, "models")
        else:
            directory = os.path.join("~", ".keras", "models")
    directory = os.path.abspath(os.path.expanduser(directory))
    _makedirs(directory)
    return directory


def resolve_url(default_url, filename):
    """Where to download ``filename`` from.

    ``<$KERAS_SENET_WEIGHTS_URL>/<filename>`` when that mirror is set (a
    trailing slash on it is ignored), else ``default_url``.
    """
    mirror = os.environ.get("KERAS_SENET_WEIGHTS_URL", "").strip()
    if not mirror:
        return default_url
    return mirror.rstrip("/") + "/" + urllib.parse.quote(filename)


def sha256_file(path):
    """The SHA-256 of the file at ``path`` as lowercase hex, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    url,
    filename,
    *,
    sha256_prefix=None,
    sha256=None,
    validate=None,
    progress=True,
    subdir=None,
):
    """Returns the path of a verified copy of ``url`` in the cache.

    The file is ``<cache_dir()>[/<subdir>]/<filename>``. If it is there and
    verifies, it is returned without touching the network. Otherwise it is
    downloaded (once, even when several processes ask at the same time),
    verified, and moved into place atomically. A cached file that fails
    verification is reported with a warning, discarded and downloaded again.

    Args:
        url: where the file is published (``http(s)://`` or ``file://``).
            Pass it through `resolve_url` to honour a mirror.
        filename: the file's name in the cache (no directories).
        sha256_prefix: the first hex digits of the file's SHA-256, as in the
            published file names (``se_resnet50-ce0d4300.pth``).
        sha256: the file's full SHA-256 (64 hex digits).
        validate: optional callable ``validate(path)`` that raises if the file
            at ``path`` is not usable (e.g. it does not open). For a fresh
            download ``path`` is the temporary file, before it is renamed.
        progress: show a progress bar on stderr while downloading.
        subdir: optional sub-directory of the cache (relative, no ``..``).

    Returns:
        The absolute path of the verified file.

    Raises:
        ValueError: an argument is malformed.
        WeightsDownloadError: the file is not cached and ``KERAS_SENET_OFFLINE``
            is set; the cache directory cannot be written; the server answered
            with an HTTP error, a truncated body, an HTML or text page, or a
            file whose hash or ``validate`` check fails. No partial or
            unverified file is left behind.
    """
    sha256_prefix, sha256 = _check_fetch_arguments(
        url, filename, sha256_prefix, sha256, validate, subdir
    )
    offline = _offline()

    directory = cache_dir()
    if subdir is not None:
        directory = os.path.join(directory, os.fspath(subdir))
        _makedirs(directory)
    path = os.path.join(directory, filename)
    checks = dict(sha256_prefix=sha256_prefix, sha256=sha256, validate=validate)

    problem = _cached_problem(path, **checks)
    if problem is None:
        return path
    if offline:
        what = (
            f"{filename} is not in the cache"
            if problem == _MISSING
            else f"the cached {filename} fails verification ({problem})"
        )
        raise WeightsDownloadError(
            f"KERAS_SENET_OFFLINE is set and {what}. Download it from {url} "
            f"and place it at {path}, or unset KERAS_SENET_OFFLINE."
        )
    if problem != _MISSING:
        warnings.warn(
            f"The cached file {path} fails verification ({problem}); it is "
            f"discarded and downloaded again from {url}.",
            stacklevel=2,
        )

    with exclusive_lock(path + ".lock", filename, progress=progress):
        # Another process may have finished the file while we waited.
        problem = _cached_problem(path, **checks)
        if problem is None:
            return path
        if problem != _MISSING:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        _download(url, path, progress=progress, **checks)
    return path


@contextlib.contextmanager
def atomic_write(path):
    """Writes a file atomically: yields a temporary path to write to.

    The temporary file is in the directory of ``path`` (created if needed)
    and keeps its extension (``x.weights.h5`` -> ``x.weights.h5.<random>.part
    .weights.h5``), so writers that check it, like ``save_weights``, accept
    it. When the ``with`` block succeeds it is synced and renamed to ``path``
    (atomically replacing any file there); when it raises, it is removed and
    ``path`` is left as it was.

    Example:

    ```python
    with atomic_write(os.path.join(cache_dir(), "x.weights.h5")) as tmp:
        model.save_weights(tmp)
    ```
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    _check_name(name, "path", value=path)
    _makedirs(directory)
    extension = name[name.index(".", 1):] if "." in name[1:] else ""
    fd, tmp = _temp_file(directory, name, suffix=".part" + extension)
    os.close(fd)
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise FileNotFoundError(
                f"atomic_write: nothing was written to the temporary file "
                f"{tmp} (it was removed or moved), so {path} is unchanged."
            )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _move_into_place(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


# Internals ------------------------------------------------------------------

_MISSING = "missing"


class _Rejected(Exception):
    """A file (cached or downloaded) does not pass verification."""


def _check_fetch_arguments(url, filename, sha256_prefix, sha256, validate, subdir):
    """Raises ValueError on a malformed argument; returns the hashes, lowercased."""
    _check_name(filename, "filename")
    if subdir is not None:
        for part in re.split(r"[\\/]", os.fspath(subdir)):
            _check_name(part, "subdir", value=subdir)
    scheme = urllib.parse.urlsplit(url).scheme if isinstance(url, str) else None
    if scheme not in ("http", "https", "file"):
        raise ValueError(
            "`url` must be an http://, https:// or file:// URL. "
            f"Received: url={url!r}"
        )
    if validate is not None and not callable(validate):
        raise ValueError(
            f"`validate` must be callable or None. Received: validate={validate!r}"
        )
    return (
        _check_hex(sha256_prefix, "sha256_prefix"),
        _check_hex(sha256, "sha256", length=64),
    )


def _check_name(name, argument, value=None):
    value = name if value is None else value
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise ValueError(
            f"`{argument}` must be a plain file or directory name (no '/', "
            f"'..' or empty parts). Received: {argument}={value!r}"
        )


def _check_hex(value, argument, length=None):
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not _HEX.fullmatch(value.lower())
        or (length is not None and len(value) != length)
    ):
        size = f"{length} " if length else ""
        raise ValueError(
            f"`{argument}` must be a string of {size}hexadecimal digits or "
            f"None. Received: {argument}={value!r}"
        )
    return value.lower()


def _offline():
    value = os.environ.get("KERAS_SENET_OFFLINE", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        "The environment variable KERAS_SENET_OFFLINE must be 1/true/yes or "
        f"0/false/no (or unset). Received: KERAS_SENET_OFFLINE={value!r}"
    )


def _unwritable(directory, error):
    return WeightsDownloadError(
        f"The weights cache directory {directory} cannot be written "
        f"({error.strerror or error}). Set the environment variable "
        "KERAS_SENET_CACHE to a writable directory."
    )


def _makedirs(directory):
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise _unwritable(directory, e) from e


def _temp_file(directory, name, suffix):
    try:
        return tempfile.mkstemp(dir=directory, prefix=name + ".", suffix=suffix)
    except OSError as e:
        raise _unwritable(directory, e) from e


def _verify(path, digest, *, sha256_prefix, sha256, validate):
    """Raises `_Rejected` saying what is wrong with the file at ``path``."""
    if sha256_prefix is not None and not digest.startswith(sha256_prefix):
        raise _Rejected(
            f"SHA-256 mismatch: expected a digest starting with "
            f"{sha256_prefix}, got {digest}"
        )
    if sha256 is not None and digest != sha256:
        raise _Rejected(f"SHA-256 mismatch: expected {sha256}, got {digest}")
    if validate is not None:
        try:
            validate(path)
        except Exception as e:  # whatever the caller's check raises
            raise _Rejected(
                f"the validate check failed: {type(e).__name__}: {e}"
            ) from e


def _cached_problem(path, **checks):
    """None if ``path`` holds a good file, else `_MISSING` or the reason."""
    if not os.path.isfile(path):
        return _MISSING
    try:
        hashed = checks["sha256_prefix"] or checks["sha256"]
        digest = sha256_file(path) if hashed else None
        _verify(path, digest, **checks)
    except _Rejected as e:
        return str(e)
    except OSError as e:
        return f"it cannot be read: {e}"
    return None


@contextlib.contextmanager
def exclusive_lock(lock_path, filename, *, progress=True):
    """Holds an exclusive `flock` on ``lock_path``; removes it on release.

    Serialises the processes that produce ``filename`` (every rank of a
    job fetching or converting the same weights); with ``progress`` a
    waiting process says so once on stderr.

    The lock file is unlinked while still locked, so a process that opened
    it before the unlink must check, once it holds the lock, that its file
    is still the one at ``lock_path``, and start over if not.
    """
    directory = os.path.dirname(lock_path)
    if fcntl is None:  # pragma: no cover
        yield
        return
    waited = False
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _unwritable(directory, e) from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if progress and not waited:
                    print(
                        f"Waiting for another process to finish {filename}",
                        file=sys.stderr,
                        flush=True,
                    )
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            current = os.stat(lock_path)
            held = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                break
        except FileNotFoundError:
            pass  # unlinked by its previous holder: lock a fresh one
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)  # releases the lock


def _discard(tmp):
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)


def _move_into_place(tmp, path):
    """Renames ``tmp`` to ``path`` atomically, readable by all like `open`."""
    os.chmod(tmp, 0o644)  # mkstemp creates files private to the owner
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _looks_like_text(head, content_type):
    """A reason if the first bytes are an HTML or text page, else None."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if "html" in content_type or stripped.startswith(_HTML_STARTS):
        return "an HTML page"
    if content_type.startswith(("text/", "application/json")) and b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a cut multi-byte character
                return None
        return f"a text page ({content_type})"
    return None


def _download(url, path, *, progress, **checks):
    """Downloads ``url`` to ``path`` through a verified temporary file."""
    directory, filename = os.path.split(path)
    fail = _failure(url, path)
    fd, tmp = _temp_file(directory, filename, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, fail, progress, filename)
            out.flush()
            os.fsync(out.fileno())
        try:
            _verify(tmp, digest, **checks)
        except _Rejected as e:
            raise fail(str(e)) from e.__cause__
        _move_into_place(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def _failure(url, path):
    def fail(reason):
        return WeightsDownloadError(
            f"Downloading {url} to {path} failed: {reason}. Nothing was saved."
        )

    return fail


def _stream(url, out, fail, progress, filename):
    """Copies the body of ``url`` to ``out``; returns its SHA-256 (hex)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        raise fail(f"HTTP error {e.code} {e.reason}") from e
    except (urllib.error.URLError, HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise fail(f"it could not be opened ({reason})") from e
    with response:
        content_type = (response.headers.get("Content-Type") or "").lower()
        expected = response.headers.get("Content-Length")
        try:
            expected = int(expected) if expected is not None else None
        except ValueError:
            expected = None
        digest = hashlib.sha256()
        head = b""
        received = 0
        bar = _ProgressBar(filename, expected) if progress else None
        try:
            while True:
                chunk = response.read(CHUNK_SIZE)
                if not chunk:
                    break
                if len(head) < _SNIFF_BYTES:
                    head += chunk[: _SNIFF_BYTES - len(head)]
                    if len(head) == _SNIFF_BYTES:  # stop early on a page
                        _reject_page(head, content_type, fail)
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if bar:
                    bar.update(received)
        except HTTPException as e:  # e.g. IncompleteRead of a chunked body
            raise fail(
                f"the connection broke after {received} bytes ({e!r})"
            ) from e
        except OSError as e:
            raise fail(f"reading failed after {received} bytes ({e})") from e
        finally:
            if bar:
                bar.close()
    _reject_page(head, content_type, fail)
    if expected is not None and received != expected:
        raise fail(
            f"the body is truncated: expected {expected} bytes "
            f"(Content-Length), received {received} bytes"
        )
    if received == 0:
        raise fail("the server sent an empty file (0 bytes)")
    return digest.hexdigest()


def _reject_page(head, content_type, fail):
    page = _looks_like_text(head, content_type)
    if page:
        raise fail(
            f"the server sent {page} instead of the file, starting with "
            f"{head[:80]!r} (an error or login page?)"
        )


class _ProgressBar:
    """A one-line download progress bar on stderr (bytes, % when known)."""

    def __init__(self, label, total):
        self.label = label
        self.total = total
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.done = 0
        print(f"Downloading {label} ({_size(total)})", file=sys.stderr, flush=True)

    def update(self, done):
        self.done = done
        now = time.monotonic()
        if self.tty and now - self.last >= 0.1:
            self.last = now
            self._draw(end="")

    def close(self):
        if self.tty:
            self._draw(end="\n")
        else:  # a log file: no carriage-return redraws, one closing line
            print(f"Received {_size(self.done)}", file=sys.stderr, flush=True)

    def _draw(self, end):
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(30 * fraction)
            bar = "=" * filled + "." * (30 - filled)
            text = f"[{bar}] {_size(self.done)}/{_size(self.total)} {fraction:4.0%}"
        else:
            text = f"{_size(self.done)}"
        speed = self.done / max(time.monotonic() - self.start, 1e-6)
        print(f"\r{text} {_size(speed)}/s   ", end=end, file=sys.stderr, flush=True)


def _size(n):
    if n is None:
        return "size unknown"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
