"""Downloading weight files into the local cache: verified, atomic, shared.

`fetch` returns the path of a verified copy of a published file, downloading
it at most once: later calls (and later processes) find it in the cache and
touch no network. A file may be published at several URLs (mirrors of the
same bytes); they are tried in order and the first copy that passes every
check wins. Nothing unverified ever reaches its final name: a download goes
to a temporary ``<name>.<random>.part`` file beside it, is checked, and is
renamed into place atomically, with the permissions ``open()`` would give
(``0o666 & ~umask``); on any failure the temporary file is removed, and the
next download of the file removes those a killed process left behind.
Processes that fetch the same file at once (every rank of a distributed job)
serialise on a lock file, so the file is downloaded once.

Checks, all that apply: the SHA-256 prefix in a published file name, a full
SHA-256 from the caller or pinned by the user (``KERAS_SENET_SHA256_FILE``),
the SHA-256 the server states (the Hugging Face hub's ``X-Linked-ETag``),
the caller's ``validate`` function; and no HTML or text page, empty or
truncated body is ever taken for the file.

Environment variables:

- ``KERAS_SENET_CACHE``: the cache directory. Default: ``$KERAS_HOME/models``
  when ``KERAS_HOME`` is set, else ``~/.keras/models`` (Keras' own default).
- ``KERAS_SENET_WEIGHTS_URL``: a mirror; files are then fetched from
  ``<mirror>/<filename>`` instead of their published URLs (``file://``
  works).
- ``KERAS_SENET_OFFLINE``: ``1``/``true`` to never touch the network; a file
  not in the cache is then an error that says where to put it.
- ``KERAS_SENET_SHA256_FILE``: a file of full SHA-256 digests in
  ``sha256sum`` format (``<64 hex digits>  <file name>`` per line); a listed
  file must match its digest, cached or downloaded. Published file names
  carry only 8 hex digits (32 bits) of their digest; this pins all 256.

This module uses the standard library only.
"""

import contextlib
import dataclasses
import errno
import hashlib
import os
import re
import secrets
import sys
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
PIN_FILE_VARIABLE = "KERAS_SENET_SHA256_FILE"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_HEX = re.compile(r"[0-9a-f]+")
_SHA256 = re.compile(r'"?([0-9a-fA-F]{64})"?')
_PIN_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_SNIFF_BYTES = 1024
_HTML_STARTS = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<!--")
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class WeightsDownloadError(OSError):
    """A weight file could not be downloaded, verified or cached.

    A subclass of `OSError`: it reports a failure of the outside world (the
    network, the server, the file system), not of the caller's arguments,
    which raise `ValueError`. The message names the URLs tried, the path
    and, where it applies, what was expected against what was received,
    and what to do about it.
    """


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What `fetch_with_digest` returns.

    Attributes:
        path: the absolute path of the verified file in the cache.
        sha256: its full SHA-256 (64 lowercase hex digits).
        url: the URL it was downloaded from by this call; None when it was
            already in the cache.
        server_sha256: the SHA-256 the server stated for it (the Hugging Face
            hub's ``X-Linked-ETag``, or an ``ETag`` that is a SHA-256),
            which the file was checked against; None when the server stated
            none or the file was already cached.
    """

    path: str
    sha256: str
    url: str | None = None
    server_sha256: str | None = None


def cache_dir(subdir=None):
    """The directory weight files are cached in, created if needed.

    ``$KERAS_SENET_CACHE`` if set, else ``$KERAS_HOME/models`` if
    ``KERAS_HOME`` is set, else ``~/.keras/models``; with ``subdir`` (a
    plain relative name), that sub-directory of it.

    Raises:
        WeightsDownloadError: the directory cannot be created; the message
            says to set ``KERAS_SENET_CACHE``.
        ValueError: ``subdir`` is not a plain relative name.
    """
    directory = os.environ.get("KERAS_SENET_CACHE")
    if not directory:
        keras_home = os.environ.get("KERAS_HOME")
        if keras_home:
            directory = os.path.join(keras_home, "models")
        else:
            directory = os.path.join("~", ".keras", "models")
    directory = os.path.abspath(os.path.expanduser(directory))
    if subdir is not None:
        _check_subdir(subdir)
        directory = os.path.join(directory, os.fspath(subdir))
    _makedirs(directory)
    return directory


def resolve_url(default_url, filename):
    """Where to download ``filename`` from.

    ``<$KERAS_SENET_WEIGHTS_URL>/<filename>`` when that mirror is set (a
    trailing slash on it is ignored), else ``default_url``.
    """
    return resolve_urls([default_url], filename)[0]


def resolve_urls(urls, filename):
    """The URLs to try, in order, for ``filename``: a list.

    ``urls`` is one URL or a sequence of URLs of the same file. When the
    mirror ``KERAS_SENET_WEIGHTS_URL`` is set, ``[<mirror>/<filename>]``
    replaces them.
    """
    mirror = os.environ.get("KERAS_SENET_WEIGHTS_URL", "").strip()
    if mirror:
        return [mirror.rstrip("/") + "/" + urllib.parse.quote(filename)]
    return [urls] if isinstance(urls, str) else list(urls)


def sha256_file(path):
    """The SHA-256 of the file at ``path`` as lowercase hex, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def format_sha256_line(digest, filename):
    """One line of a ``KERAS_SENET_SHA256_FILE``: ``sha256sum``'s format."""
    if digest is None:
        raise ValueError("`digest` must be a SHA-256 digest. Received: digest=None")
    digest = _check_hex(digest, "digest", length=64)
    _check_name(filename, "filename")
    return f"{digest}  {filename}"


def pinned_sha256(filename):
    """The full SHA-256 pinned for ``filename`` in ``KERAS_SENET_SHA256_FILE``.

    None when the variable is unset or the file does not list ``filename``.
    Lines are ``<64 hex digits>  <name>`` (``sha256sum`` output; ``*`` before
    the name, blank lines and ``#`` comments allowed); a listed name that is
    a path matches by its last component.

    Raises:
        ValueError: the variable names a file that cannot be read, or one
            with a malformed line (the message names the file and line).
    """
    pins = _pins()
    return pins[0].get(filename) if pins else None


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
        url: where the file is published (``http(s)://`` or ``file://``), or
            a list or tuple of such URLs of the same file, tried in order
            until one gives a copy that passes every check. Pass it through
            `resolve_urls` to honour a mirror.
        filename: the file's name in the cache (no directories).
        sha256_prefix: the first hex digits of the file's SHA-256, as in the
            published file names (``se_resnet50-ce0d4300.pth``).
        sha256: the file's full SHA-256 (64 hex digits). A digest pinned for
            ``filename`` in ``KERAS_SENET_SHA256_FILE`` must match as well,
            and so must the digest the server states, if it states one.
        validate: optional callable ``validate(path)`` that raises if the file
            at ``path`` is not usable (e.g. it does not open). For a fresh
            download ``path`` is the temporary file, before it is renamed.
        progress: show a progress bar on stderr while downloading.
        subdir: optional sub-directory of the cache (relative, no ``..``).

    Returns:
        The absolute path of the verified file (`fetch_with_digest` also
        gives its SHA-256 and where it came from).

    Raises:
        ValueError: an argument or an environment variable is malformed.
        WeightsDownloadError: the file is not cached and ``KERAS_SENET_OFFLINE``
            is set; the cache directory cannot be written or its disk is
            full; every URL failed: an HTTP or connection error, a truncated
            body, an HTML or text page, or a file whose hash or ``validate``
            check fails (the message lists each URL with its reason and the
            remedies). No partial or unverified file is left behind.
    """
    return _fetch(url, filename, sha256_prefix, sha256, validate, progress,
                  subdir, want_digest=False).path


def fetch_with_digest(
    url,
    filename,
    *,
    sha256_prefix=None,
    sha256=None,
    validate=None,
    progress=True,
    subdir=None,
):
    """`fetch`, returning a `Fetched`: the path, the file's full SHA-256 and,
    for a fresh download, the URL and the SHA-256 the server stated.

    Use it to record a file's digest at its first download (e.g. in a cache
    manifest) and pass it as ``sha256=`` later. A cached file is hashed to
    give its digest.
    """
    return _fetch(url, filename, sha256_prefix, sha256, validate, progress,
                  subdir, want_digest=True)


def _fetch(url, filename, sha256_prefix, sha256, validate, progress, subdir,
           want_digest):
    urls, checks = _check_fetch_arguments(
        url, filename, sha256_prefix, sha256, validate, subdir
    )
    offline = _offline()
    directory = cache_dir(subdir)
    path = os.path.join(directory, filename)

    problem, digest = _cached_problem(path, checks, want_digest)
    if problem is None:
        return Fetched(path, digest)
    if offline:
        what = (
            f"{filename} is not in the cache"
            if problem == _MISSING
            else f"the cached {filename} fails verification ({problem})"
        )
        raise WeightsDownloadError(
            f"KERAS_SENET_OFFLINE is set and {what}, so nothing was "
            f"downloaded. {_remedies(filename, path, urls, offline=True)}"
        )
    if problem != _MISSING:
        warnings.warn(
            f"The cached file {path} fails verification ({problem}); it is "
            f"discarded and downloaded again from {' or '.join(urls)}.",
            stacklevel=3,
        )

    with exclusive_lock(path + ".lock", filename, progress=progress):
        # Another process may have finished the file while we waited.
        problem, digest = _cached_problem(path, checks, want_digest)
        if problem is None:
            return Fetched(path, digest)
        if problem != _MISSING:
            _discard(path)
        remove_stale_parts(path)  # we hold the lock: nobody writes them
        failures = []
        for source in urls:
            try:
                digest, stated = _download(source, path, checks, progress)
            except _Rejected as rejected:
                failures.append((source, str(rejected)))
                continue
            return Fetched(path, digest, source, stated)
    raise WeightsDownloadError(_all_failed(filename, path, urls, failures))


@contextlib.contextmanager
def atomic_write(path):
    """Writes a file atomically: yields a temporary path to write to.

    The temporary file is in the directory of ``path`` (created if needed)
    and keeps its extension (``x.weights.h5`` -> ``x.weights.h5.<random>.part
    .weights.h5``), so writers that check it, like ``save_weights``, accept
    it. When the ``with`` block succeeds it is synced and renamed to ``path``
    (atomically replacing any file there); when it raises, it is removed and
    ``path`` is left as it was. The file gets the permissions ``open()``
    would give it.

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


def remove_stale_parts(path):
    """Removes the temporary files that writes of ``path`` left behind.

    `fetch` and `atomic_write` write ``<name>.<random>.part`` (plus the
    extension, for `atomic_write`) next to ``path``; a process killed while
    writing leaves its file there. Call this only while holding the lock
    that every writer of ``path`` holds (`fetch` does, under
    `exclusive_lock`), so that no live writer owns them. Returns the names
    removed.
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    extension = name[name.index(".", 1):] if "." in name[1:] else ""
    stale = re.compile(
        re.escape(name) + r"\.[0-9a-z_]{8}\.part(?:" + re.escape(extension) + ")?"
    )
    removed = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if stale.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                _discard(entry.path)
                removed.append(entry.name)
    return removed


# Internals ------------------------------------------------------------------

_MISSING = "missing"


class _Rejected(Exception):
    """A file (cached or downloaded) does not pass verification, or one URL
    did not give it; the message says why, the caller adds URL and path."""


class _WriteFailed(Exception):
    """Writing the temporary file failed (``__cause__``: the OSError)."""


@dataclasses.dataclass(frozen=True)
class _Checks:
    sha256_prefix: str | None
    sha256: str | None
    pinned: tuple | None  # (digest, pin file)
    validate: object

    @property
    def hashed(self):
        return bool(self.sha256_prefix or self.sha256 or self.pinned)

    def verify(self, path, digest, stated=None):
        """Raises `_Rejected` saying what is wrong with the file at ``path``."""
        if self.sha256_prefix is not None and not digest.startswith(
            self.sha256_prefix
        ):
            raise _Rejected(
                f"SHA-256 mismatch: expected a digest starting with "
                f"{self.sha256_prefix}, got {digest}"
            )
        if self.sha256 is not None and digest != self.sha256:
            raise _Rejected(
                f"SHA-256 mismatch: expected {self.sha256}, got {digest}"
            )
        if self.pinned is not None and digest != self.pinned[0]:
            raise _Rejected(
                f"SHA-256 mismatch: {self.pinned[1]} ({PIN_FILE_VARIABLE}) "
                f"pins {self.pinned[0]}, got {digest}"
            )
        if stated is not None and digest != stated:
            raise _Rejected(
                f"SHA-256 mismatch: the server stated {stated}, the body "
                f"hashes to {digest}"
            )
        if self.validate is not None:
            try:
                self.validate(path)
            except Exception as e:  # whatever the caller's check raises
                raise _Rejected(
                    f"the validate check failed: {type(e).__name__}: {e}"
                ) from e


def _check_fetch_arguments(url, filename, sha256_prefix, sha256, validate, subdir):
    """Raises ValueError on a malformed argument; returns (urls, checks)."""
    _check_name(filename, "filename")
    if subdir is not None:
        _check_subdir(subdir)
    urls = [url] if isinstance(url, str) else url
    if not (
        isinstance(urls, (list, tuple))
        and urls
        and all(
            isinstance(u, str)
            and urllib.parse.urlsplit(u).scheme in ("http", "https", "file")
            for u in urls
        )
    ):
        raise ValueError(
            "`url` must be an http://, https:// or file:// URL, or a "
            f"non-empty list or tuple of them. Received: url={url!r}"
        )
    if validate is not None and not callable(validate):
        raise ValueError(
            f"`validate` must be callable or None. Received: validate={validate!r}"
        )
    pins = _pins()
    pinned = None
    if pins and filename in pins[0]:
        pinned = (pins[0][filename], pins[1])
    checks = _Checks(
        _check_hex(sha256_prefix, "sha256_prefix"),
        _check_hex(sha256, "sha256", length=64),
        pinned,
        validate,
    )
    return list(urls), checks


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


def _check_subdir(subdir):
    if not isinstance(subdir, (str, os.PathLike)):
        raise ValueError(
            "`subdir` must be a relative directory name. "
            f"Received: subdir={subdir!r}"
        )
    for part in re.split(r"[\\/]", os.fspath(subdir)):
        _check_name(part, "subdir", value=subdir)


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


def _pins():
    """``({filename: digest}, pin file)`` from KERAS_SENET_SHA256_FILE, or None."""
    source = os.environ.get(PIN_FILE_VARIABLE, "").strip()
    if not source:
        return None
    try:
        with open(os.path.expanduser(source), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)
        raise ValueError(
            f"The environment variable {PIN_FILE_VARIABLE} must name a "
            f"readable sha256sum file; {source} cannot be read ({reason}). "
            f"Received: {PIN_FILE_VARIABLE}={source!r}"
        ) from e
    pins = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = _PIN_LINE.fullmatch(text)
        if not match:
            raise ValueError(
                f"{source} ({PIN_FILE_VARIABLE}), line {number}: expected "
                f"'<64 hex digits>  <file name>' (sha256sum's format), got "
                f"{line!r:.100}"
            )
        digest, name = match[1].lower(), match[2].rsplit("/", 1)[-1]
        if pins.setdefault(name, digest) != digest:
            raise ValueError(
                f"{source} ({PIN_FILE_VARIABLE}), line {number}: pins {name} "
                f"to {digest}, but an earlier line pins it to {pins[name]}"
            )
    return pins, source


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
    """``(fd, path)`` of a new ``<name>.<random><suffix>``, created like
    ``open(path, "x")``: permissions ``0o666 & ~umask``."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(directory, f"{name}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise _unwritable(directory, e) from e


def _cached_problem(path, checks, want_digest):
    """``(None, digest)`` if ``path`` holds a good file, else ``(problem,
    None)`` with problem `_MISSING` or the reason. ``digest`` is None unless
    the file was hashed (for a check, or ``want_digest``)."""
    if not os.path.isfile(path):
        return _MISSING, None
    try:
        digest = sha256_file(path) if checks.hashed or want_digest else None
        checks.verify(path, digest)
    except _Rejected as e:
        return str(e), None
    except OSError as e:
        return f"it cannot be read: {e}", None
    return None, digest


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
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
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
    """Renames ``tmp`` to ``path`` atomically and makes the rename durable."""
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise _unwritable(os.path.dirname(path), e) from e
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remedies(filename, path, urls, offline=False):
    where = " or ".join(urls)
    if offline:
        return (
            f"To fix it: download {filename} yourself (published at {where}) "
            f"and place it at {path}; or unset KERAS_SENET_OFFLINE to download "
            "it (KERAS_SENET_WEIGHTS_URL=<mirror> fetches it from a mirror)."
        )
    return (
        f"To fix it: set KERAS_SENET_WEIGHTS_URL to a mirror that serves "
        f"{filename} (it is fetched as <mirror>/{filename}), or download it "
        f"yourself and place it at {path} (KERAS_SENET_OFFLINE=1 then keeps "
        "everything off the network)."
    )


def _all_failed(filename, path, urls, failures):
    if len(failures) == 1:
        url, reason = failures[0]
        what = f"Downloading {url} to {path} failed: {reason}."
    else:
        lines = "".join(f"\n  - {url}: {reason}" for url, reason in failures)
        what = (
            f"Downloading {filename} to {path} failed from all "
            f"{len(failures)} URLs:{lines}\n"
        )
    return f"{what} Nothing was saved. {_remedies(filename, path, urls)}"


def _write_failure(url, path, error, written, expected):
    directory = os.path.dirname(path)
    if error.errno in _DISK_FULL:
        need = f"; the file needs {_size(expected)}" if expected else ""
        return WeightsDownloadError(
            f"Downloading {url} to {path} failed: the disk is full "
            f"({error.strerror}) after {_size(written)}{need}. Nothing was "
            f"saved. Free space on the disk that holds {directory}, or set "
            "KERAS_SENET_CACHE to a directory on a disk with room."
        )
    problem = _unwritable(directory, error)
    return WeightsDownloadError(
        f"Downloading {url} to {path} failed: {problem} Nothing was saved."
    )


def _download(url, path, checks, progress):
    """Downloads ``url`` to ``path`` through a verified temporary file.

    Returns ``(sha256, stated sha256 or None)``. Raises `_Rejected` when
    this URL did not give a good file (the caller tries the next), and
    WeightsDownloadError when the cache cannot take it (no use trying on).
    """
    directory, filename = os.path.split(path)
    fd, tmp = _temp_file(directory, filename, suffix=".part")
    sink = _Sink(fd)
    try:
        try:
            digest, stated = _stream(url, sink, progress, filename)
            sink.sync()
        finally:
            os.close(fd)
        checks.verify(tmp, digest, stated)
        _move_into_place(tmp, path)
    except _WriteFailed as failed:
        _discard(tmp)
        raise _write_failure(
            url, path, failed.__cause__, sink.written, sink.expected
        ) from failed.__cause__
    except BaseException:
        _discard(tmp)
        raise
    return digest, stated


class _Sink:
    """Writes a download to its temporary file; a failure is `_WriteFailed`."""

    def __init__(self, fd):
        self.fd = fd
        self.written = 0
        self.expected = None

    def write(self, data):
        view = memoryview(data)
        try:
            while view:
                count = os.write(self.fd, view)
                view = view[count:]
                self.written += count
        except OSError as e:
            raise _WriteFailed() from e

    def sync(self):
        try:
            os.fsync(self.fd)  # a full disk may only show here
        except OSError as e:
            raise _WriteFailed() from e


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib, keeping each redirect's headers: the
    Hugging Face hub states a file's SHA-256 on its redirect to the CDN."""

    def __init__(self):
        self.headers = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _stated_sha256(redirect_headers, final_headers):
    """The SHA-256 the server states for the body, or None.

    ``X-Linked-ETag`` on any response of the chain (the hub's LFS files),
    else a final ``ETag`` that is a quoted 64-digit hex string.
    """
    for headers in [*redirect_headers, final_headers]:
        match = _SHA256.fullmatch((headers.get("X-Linked-ETag") or "").strip())
        if match:
            return match[1].lower()
    etag = (final_headers.get("ETag") or "").strip()
    if re.fullmatch(r'"[0-9a-fA-F]{64}"', etag):
        return etag[1:-1].lower()
    return None


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


def _reject_page(head, content_type):
    page = _looks_like_text(head, content_type)
    if page:
        raise _Rejected(
            f"the server sent {page} instead of the file, starting with "
            f"{head[:80]!r} (an error or login page?)"
        )


def _stream(url, sink, progress, filename):
    """Copies the body of ``url`` to ``sink``; returns ``(its SHA-256, the
    SHA-256 the server stated or None)``."""
    redirects = _RecordRedirects()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = opener.open(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        raise _Rejected(f"HTTP error {e.code} {e.reason}") from e
    except (urllib.error.URLError, HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _Rejected(f"it could not be opened ({reason})") from e
    with response:
        content_type = (response.headers.get("Content-Type") or "").lower()
        expected = response.headers.get("Content-Length")
        try:
            sink.expected = int(expected) if expected is not None else None
        except ValueError:
            sink.expected = None
        stated = _stated_sha256(redirects.headers, response.headers)
        digest = hashlib.sha256()
        head = b""
        received = 0
        bar = _ProgressBar(filename, sink.expected) if progress else None
        try:
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except HTTPException as e:  # e.g. IncompleteRead of a chunked body
                    raise _Rejected(
                        f"the connection broke after {received} bytes ({e!r})"
                    ) from e
                except OSError as e:
                    raise _Rejected(
                        f"reading failed after {received} bytes ({e})"
                    ) from e
                if not chunk:
                    break
                if len(head) < _SNIFF_BYTES:
                    head += chunk[: _SNIFF_BYTES - len(head)]
                    if len(head) == _SNIFF_BYTES:  # stop early on a page
                        _reject_page(head, content_type)
                sink.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if bar:
                    bar.update(received)
        finally:
            if bar:
                bar.close()
    _reject_page(head, content_type)
    if sink.expected is not None and received != sink.expected:
        raise _Rejected(
            f"the body is truncated: expected {sink.expected} bytes "
            f"(Content-Length), received {received} bytes"
        )
    if received == 0:
        raise _Rejected("the server sent an empty file (0 bytes)")
    return digest.hexdigest(), stated


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
