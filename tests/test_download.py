"""Tests for keras_senet.download against a local HTTP server (127.0.0.1).

The module under test is imported in a fixture, not at the top: the spawned
processes of the concurrency test import this file, and importing the
keras_senet package there would load Keras and TensorFlow in each of them.
They load download.py (standard library only) on its own instead.
"""

import errno
import hashlib
import http.server
import importlib
import importlib.util
import multiprocessing
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

DOWNLOAD_PY = Path(__file__).resolve().parents[1] / "keras_senet" / "download.py"

# A binary payload like a checkpoint: zip magic, NUL bytes, random content.
PAYLOAD = b"PK\x03\x04\x14\x00\x00\x00" + random.Random(1709).randbytes(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
NAME = f"se_resnet50-{DIGEST[:8]}.pth"
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>"


@pytest.fixture
def dl():
    return importlib.import_module("keras_senet.download")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    for name in ("KERAS_SENET_WEIGHTS_URL", "KERAS_SENET_OFFLINE", "KERAS_HOME",
                 "KERAS_SENET_SHA256_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    directory = tmp_path / "cache"
    monkeypatch.setenv("KERAS_SENET_CACHE", str(directory))
    return directory


class Route:
    """What the server answers for one path.

    ``headers``: extra response headers (``Location`` for a redirect,
    ``X-Linked-ETag`` ...); ``stall``: send half the body, then hang until
    the server's ``release`` event is set.
    """

    def __init__(self, body, status=200, content_type="application/octet-stream",
                 length=None, delay=0.0, headers=None, stall=False):
        self.body = body
        self.status = status
        self.content_type = content_type
        self.length = len(body) if length is None else length
        self.delay = delay
        self.headers = headers or {}
        self.stall = stall


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests.append(self.path)
            server.user_agents.append(self.headers.get("User-Agent"))
        route = server.routes.get(self.path) or Route(
            b"<html><body>404 Not Found</body></html>", 404, "text/html"
        )
        time.sleep(route.delay)
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(route.length))
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if route.stall:
            self.wfile.write(route.body[: len(route.body) // 2])
            self.wfile.flush()
            server.release.wait(60)
            return
        self.wfile.write(route.body)  # HTTP/1.0: the connection closes after

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.requests, httpd.user_agents = {}, [], []
    httpd.lock, httpd.release = threading.Lock(), threading.Event()
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_port}{path}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


def files_in(directory):
    """Every file left under ``directory`` (weights, .part, .lock ...)."""
    if not directory.exists():
        return []
    return sorted(p.relative_to(directory).as_posix()
                  for p in directory.rglob("*") if not p.is_dir())


def test_cache_dir_precedence(dl, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KERAS_SENET_CACHE")
    assert dl.cache_dir() == str(tmp_path / "home" / ".keras" / "models")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert dl.cache_dir() == str(tmp_path / "kh" / "models")
    monkeypatch.setenv("KERAS_SENET_CACHE", str(tmp_path / "mine"))
    assert dl.cache_dir() == str(tmp_path / "mine")
    for d in ("home/.keras/models", "kh/models", "mine"):
        assert (tmp_path / d).is_dir()


def test_resolve_url(dl, monkeypatch):
    default = "https://example.org/releases/v1/w.pth"
    assert dl.resolve_url(default, "w.pth") == default
    monkeypatch.setenv("KERAS_SENET_WEIGHTS_URL", "http://mirror.local/senet/")
    assert dl.resolve_url(default, "w.pth") == "http://mirror.local/senet/w.pth"


def test_sha256_file_streams_multiple_chunks(dl, tmp_path):
    data = random.Random(0).randbytes(2 * dl.CHUNK_SIZE + 17)
    (tmp_path / "f").write_bytes(data)
    assert dl.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_download_then_cache_hit(dl, server, cache, capfd):
    server.routes["/w/" + NAME] = Route(PAYLOAD)
    url = server.url("/w/" + NAME)
    path = dl.fetch(url, NAME, sha256_prefix=DIGEST[:8], sha256=DIGEST)
    assert path == str(cache / NAME)
    assert Path(path).read_bytes() == PAYLOAD
    assert server.requests == ["/w/" + NAME]
    assert "keras-senet" in server.user_agents[0]
    assert NAME in capfd.readouterr().err  # the progress bar
    assert files_in(cache) == [NAME]

    again = dl.fetch(url, NAME, sha256_prefix=DIGEST[:8], progress=False)
    assert again == path
    assert server.requests == ["/w/" + NAME]  # no second request
    assert capfd.readouterr().err == ""


def test_subdir_and_validate_on_fresh_and_cached(dl, server, cache):
    server.routes["/" + NAME] = Route(PAYLOAD)
    seen = []

    def validate(p):
        seen.append(p)
        assert Path(p).read_bytes() == PAYLOAD

    kwargs = dict(sha256=DIGEST, validate=validate, progress=False, subdir="v1")
    path = dl.fetch(server.url("/" + NAME), NAME, **kwargs)
    assert path == str(cache / "v1" / NAME)
    # A fresh download is validated before it gets its final name.
    assert os.path.dirname(seen[0]) == str(cache / "v1") and seen[0] != path
    assert dl.fetch(server.url("/" + NAME), NAME, **kwargs) == path
    assert seen[1] == path and len(server.requests) == 1


def test_weights_url_override(dl, server, cache, monkeypatch):
    server.routes["/mirror/" + NAME] = Route(PAYLOAD)
    monkeypatch.setenv("KERAS_SENET_WEIGHTS_URL", server.url("/mirror/"))
    url = dl.resolve_url(server.url("/published/" + NAME), NAME)
    path = dl.fetch(url, NAME, sha256=DIGEST, progress=False)
    assert server.requests == ["/mirror/" + NAME]
    assert Path(path).read_bytes() == PAYLOAD


def test_file_mirror(dl, tmp_path, cache, monkeypatch):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / NAME).write_bytes(PAYLOAD)
    monkeypatch.setenv("KERAS_SENET_WEIGHTS_URL", (tmp_path / "mirror").as_uri())
    url = dl.resolve_url("https://unreachable.invalid/" + NAME, NAME)
    path = dl.fetch(url, NAME, sha256=DIGEST, progress=False)
    assert Path(path).read_bytes() == PAYLOAD


@pytest.mark.parametrize("value", ["1", "true"])
def test_offline_uses_cached_file(dl, server, cache, monkeypatch, value):
    cache.mkdir()
    (cache / NAME).write_bytes(PAYLOAD)  # e.g. copied there by hand
    monkeypatch.setenv("KERAS_SENET_OFFLINE", value)
    path = dl.fetch(server.url("/" + NAME), NAME, sha256=DIGEST)
    assert path == str(cache / NAME) and server.requests == []


def test_offline_missing_file_says_where_to_put_it(dl, server, cache, monkeypatch):
    server.routes["/" + NAME] = Route(PAYLOAD)
    monkeypatch.setenv("KERAS_SENET_OFFLINE", "1")
    url = server.url("/" + NAME)
    with pytest.raises(dl.WeightsDownloadError) as info:
        dl.fetch(url, NAME, sha256=DIGEST)
    message = str(info.value)
    assert str(cache / NAME) in message and url in message
    assert "KERAS_SENET_OFFLINE" in message
    assert server.requests == [] and files_in(cache) == []


LONG_HTML = HTML + b"<p>Please sign in.</p>" * 100  # longer than the sniffed head
BAD_RESPONSES = {
    "truncated": (Route(PAYLOAD[:5000], length=len(PAYLOAD)), {},
                  ["truncated", f"expected {len(PAYLOAD)} bytes", "received 5000"]),
    "wrong-prefix": (Route(PAYLOAD), {"sha256_prefix": "0123abcd"},
                     ["0123abcd", DIGEST]),
    "wrong-sha256": (Route(PAYLOAD), {"sha256": "f" * 64}, ["f" * 64, DIGEST]),
    "html-200": (Route(HTML, content_type="text/html; charset=utf-8"), {},
                 ["HTML page"]),
    "html-as-binary": (Route(LONG_HTML), {}, ["HTML page"]),
    "text-200": (Route(b"Not Found", content_type="text/plain"), {}, ["text page"]),
    "http-404": (Route(b"gone", status=404, content_type="text/plain"), {},
                 ["HTTP error 404"]),
    "http-500": (Route(b"", status=500), {}, ["HTTP error 500"]),
    "empty": (Route(b""), {}, ["empty file"]),
}


@pytest.mark.parametrize("case", list(BAD_RESPONSES))
def test_bad_response_is_rejected_and_nothing_is_kept(dl, server, cache, case):
    route, kwargs, expected = BAD_RESPONSES[case]
    assert not DIGEST.startswith("0123abcd")
    server.routes["/" + NAME] = route
    url = server.url("/" + NAME)
    with pytest.raises(dl.WeightsDownloadError) as info:
        dl.fetch(url, NAME, progress=False, **kwargs)
    message = str(info.value)
    assert url in message and str(cache / NAME) in message
    for text in expected:
        assert text in message
    assert files_in(cache) == []
    assert server.requests == ["/" + NAME]


def test_validate_failure_is_rejected(dl, server, cache):
    server.routes["/" + NAME] = Route(PAYLOAD)

    def validate(path):
        raise ValueError(f"{path} is not a checkpoint: bad magic")

    with pytest.raises(dl.WeightsDownloadError, match="ValueError.*bad magic"):
        dl.fetch(server.url("/" + NAME), NAME, validate=validate, progress=False)
    assert files_in(cache) == []


def test_corrupt_cached_file_is_replaced(dl, server, cache):
    server.routes["/" + NAME] = Route(PAYLOAD)
    cache.mkdir()
    (cache / NAME).write_bytes(PAYLOAD[:1000])  # e.g. an old partial copy
    with pytest.warns(UserWarning, match="fails verification"):
        path = dl.fetch(server.url("/" + NAME), NAME, sha256_prefix=DIGEST[:8],
                        progress=False)
    assert Path(path).read_bytes() == PAYLOAD
    assert len(server.requests) == 1 and files_in(cache) == [NAME]


def test_corrupt_cached_file_is_dropped_when_download_fails(dl, server, cache):
    cache.mkdir()
    (cache / NAME).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="fails verification"):
        with pytest.raises(dl.WeightsDownloadError, match="404"):
            dl.fetch(server.url("/missing/" + NAME), NAME, sha256=DIGEST,
                     progress=False)
    assert files_in(cache) == []


def test_cache_under_a_regular_file(dl, server, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_bytes(b"x")
    directory = tmp_path / "a_file" / "cache"
    monkeypatch.setenv("KERAS_SENET_CACHE", str(directory))
    with pytest.raises(dl.WeightsDownloadError) as info:
        dl.fetch(server.url("/" + NAME), NAME, progress=False)
    assert str(directory) in str(info.value)
    assert "KERAS_SENET_CACHE" in str(info.value)
    assert server.requests == []


def _refuses_writes(directory):
    try:
        probe = directory / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return True
    return False


def test_existing_cache_dir_that_refuses_writes(dl, server, tmp_path, monkeypatch):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    # As root chmod does not stop writes; /proc/self refuses new files anyway.
    candidates = [read_only, Path("/proc/self")]
    directory = next((d for d in candidates
                      if d.is_dir() and _refuses_writes(d)), None)
    if directory is None:
        read_only.chmod(0o755)
        pytest.skip("no directory that refuses writes to this user")
    monkeypatch.setenv("KERAS_SENET_CACHE", str(directory))
    try:
        with pytest.raises(dl.WeightsDownloadError) as info:
            dl.fetch(server.url("/" + NAME), NAME, progress=False)
    finally:
        read_only.chmod(0o755)
    assert f"directory {directory} cannot be written" in str(info.value)
    assert "KERAS_SENET_CACHE" in str(info.value)
    assert server.requests == []


@pytest.mark.parametrize("kwargs, argument", [
    ({"filename": "../escape.pth"}, "filename"),
    ({"filename": "a/b.pth"}, "filename"),
    ({"filename": ""}, "filename"),
    ({"subdir": "../up"}, "subdir"),
    ({"sha256_prefix": "xyz"}, "sha256_prefix"),
    ({"sha256": DIGEST[:20]}, "sha256"),
    ({"url": "ftp://example.org/w.pth"}, "url"),
    ({"validate": "yes"}, "validate"),
])
def test_bad_arguments(dl, server, kwargs, argument):
    call = {"url": server.url("/" + NAME), "filename": NAME, **kwargs}
    with pytest.raises(ValueError, match=f"{argument}=") as info:
        dl.fetch(call.pop("url"), call.pop("filename"), **call)
    assert not isinstance(info.value, dl.WeightsDownloadError)
    assert server.requests == []


def test_bad_offline_value(dl, server, monkeypatch):
    monkeypatch.setenv("KERAS_SENET_OFFLINE", "maybe")
    with pytest.raises(ValueError, match="KERAS_SENET_OFFLINE='maybe'"):
        dl.fetch(server.url("/" + NAME), NAME)


def _fetch_in_child(barrier, url, results):
    spec = importlib.util.spec_from_file_location("_download", DOWNLOAD_PY)
    download = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(download)
    barrier.wait(timeout=120)
    try:
        results.put(("ok", download.fetch(url, NAME, sha256=DIGEST, progress=False)))
    except BaseException as e:  # report, do not hang the parent
        results.put(("error", repr(e)))


def test_concurrent_processes_download_once(server, cache):
    # Slow answers keep all four processes inside fetch at the same time.
    server.routes["/" + NAME] = Route(PAYLOAD, delay=1.0)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_fetch_in_child,
                               args=(barrier, server.url("/" + NAME), results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == [("ok", str(cache / NAME))] * 4
    assert (cache / NAME).read_bytes() == PAYLOAD
    assert server.requests == ["/" + NAME]
    assert files_in(cache) == [NAME]  # no .part or .lock files


def test_atomic_write_success(dl, cache):
    target = cache / "sub" / "model.weights.h5"
    with dl.atomic_write(target) as tmp:
        assert os.path.dirname(tmp) == str(target.parent)
        assert tmp.endswith(".part.weights.h5") and not target.exists()
        Path(tmp).write_bytes(b"new weights")
    assert target.read_bytes() == b"new weights"
    assert files_in(cache) == ["sub/model.weights.h5"]


def test_atomic_write_failure_keeps_old_file(dl, cache):
    cache.mkdir()
    target = cache / "model.weights.h5"
    target.write_bytes(b"old weights")
    with pytest.raises(RuntimeError, match="conversion failed"):
        with dl.atomic_write(target) as tmp:
            Path(tmp).write_bytes(b"half written")
            raise RuntimeError("conversion failed")
    assert target.read_bytes() == b"old weights"
    assert files_in(cache) == ["model.weights.h5"]


# --- Several URLs, and what every failure says. ------------------------------


def test_urls_are_tried_in_order_until_one_passes(dl, server, cache):
    server.routes["/a/" + NAME] = Route(b"gone", 404, "text/plain")
    server.routes["/b/" + NAME] = Route(LONG_HTML)  # a login page
    server.routes["/c/" + NAME] = Route(PAYLOAD)
    server.routes["/d/" + NAME] = Route(PAYLOAD)
    urls = [server.url(f"/{x}/" + NAME) for x in "abcd"]
    path = dl.fetch(urls, NAME, sha256_prefix=DIGEST[:8], progress=False)
    assert Path(path).read_bytes() == PAYLOAD and files_in(cache) == [NAME]
    assert server.requests == ["/a/" + NAME, "/b/" + NAME, "/c/" + NAME]


def test_every_url_failing_lists_each_reason_and_the_remedies(dl, server, cache):
    server.routes["/a/" + NAME] = Route(b"gone", 404, "text/plain")
    server.routes["/b/" + NAME] = Route(PAYLOAD[:-1] + b"x")  # wrong bytes
    urls = (server.url("/a/" + NAME), server.url("/b/" + NAME))
    with pytest.raises(dl.WeightsDownloadError) as info:
        dl.fetch(urls, NAME, sha256_prefix=DIGEST[:8], progress=False)
    message = str(info.value)
    assert f"{urls[0]}: HTTP error 404" in message
    assert f"{urls[1]}: SHA-256 mismatch: expected a digest starting with {DIGEST[:8]}" in message
    assert f"place it at {cache / NAME}" in message
    assert "KERAS_SENET_WEIGHTS_URL" in message and "KERAS_SENET_OFFLINE=1" in message
    assert message.count("Nothing was saved") == 1
    assert files_in(cache) == []


def test_html_page_served_as_binary_is_reported_once(dl, server, cache):
    server.routes["/" + NAME] = Route(LONG_HTML)  # application/octet-stream
    url = server.url("/" + NAME)
    with pytest.raises(dl.WeightsDownloadError) as info:
        dl.fetch(url, NAME, progress=False)
    message = str(info.value)
    assert message.startswith(f"Downloading {url} to {cache / NAME} failed: the "
                              "server sent an HTML page instead of the file")
    assert message.count(url) == 1 and "reading failed" not in message
    assert files_in(cache) == []


def test_resolve_urls(dl, monkeypatch):
    urls = ("https://a.example/w.pth", "https://b.example/w.pth")
    assert dl.resolve_urls(urls, "w.pth") == list(urls)
    assert dl.resolve_urls(urls[0], "w.pth") == [urls[0]]
    monkeypatch.setenv("KERAS_SENET_WEIGHTS_URL", "file:///srv/weights/")
    assert dl.resolve_urls(urls, "w 1.pth") == ["file:///srv/weights/w%201.pth"]
    assert dl.resolve_url(urls[0], "w.pth") == "file:///srv/weights/w.pth"


def test_offline_error_gives_the_same_remedies(dl, server, cache, monkeypatch):
    monkeypatch.setenv("KERAS_SENET_OFFLINE", "1")
    urls = [server.url("/a/" + NAME), server.url("/b/" + NAME)]
    with pytest.raises(dl.WeightsDownloadError) as info:
        dl.fetch(urls, NAME)
    message = str(info.value)
    assert f"place it at {cache / NAME}" in message
    assert all(url in message for url in urls)
    assert "unset KERAS_SENET_OFFLINE" in message and "KERAS_SENET_WEIGHTS_URL" in message
    assert server.requests == []


# --- Leftovers of killed downloads. ------------------------------------------


def _fetch_until_killed(url):
    spec = importlib.util.spec_from_file_location("_download", DOWNLOAD_PY)
    download = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(download)
    download.fetch(url, NAME, progress=False)


def test_partial_files_of_a_killed_download_are_removed_next_time(dl, server, cache):
    server.routes["/" + NAME] = Route(PAYLOAD, stall=True)
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=_fetch_until_killed, args=(server.url("/" + NAME),))
    worker.start()
    deadline = time.monotonic() + 120
    while not any(name.endswith(".part") for name in files_in(cache)):
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.05)
    worker.kill()  # SIGKILL: no cleanup runs
    worker.join(30)
    leftovers = [n for n in files_in(cache) if n.endswith(".part")]
    assert len(leftovers) == 1 and leftovers[0].startswith(NAME + ".")
    (cache / "other.pth.abcd1234.part").write_bytes(b"another file's")
    server.routes["/" + NAME] = Route(PAYLOAD)
    dl.fetch(server.url("/" + NAME), NAME, sha256=DIGEST, progress=False)
    assert files_in(cache) == sorted([NAME, "other.pth.abcd1234.part"])


# --- Disk full, permissions. -------------------------------------------------


@pytest.fixture
def full_disk(dl, monkeypatch):
    """Writes to (or syncs of) download temporary files fail with ENOSPC
    after ``full_disk.after`` bytes; other files are untouched."""
    fds, real_write, real_fsync = set(), os.write, os.fsync
    real_temp_file = dl._temp_file

    def temp_file(*args, **kwargs):
        fd, path = real_temp_file(*args, **kwargs)
        fds.add(fd)
        return fd, path

    class Disk:
        after, at_sync, written = 100_000, False, 0

    def write(fd, data):
        if fd in fds and not Disk.at_sync:
            if Disk.written >= Disk.after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            Disk.written += len(data)
        return real_write(fd, data)

    def fsync(fd):
        if fd in fds and Disk.at_sync:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(dl, "_temp_file", temp_file)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(dl, "CHUNK_SIZE", 64 * 1024)
    return Disk


@pytest.mark.parametrize("at_sync", [False, True])
def test_disk_full_is_one_clear_error_and_leaves_nothing(dl, server, cache,
                                                         full_disk, at_sync):
    full_disk.at_sync = at_sync
    server.routes["/a/" + NAME] = Route(PAYLOAD)
    server.routes["/b/" + NAME] = Route(PAYLOAD)
    urls = [server.url("/a/" + NAME), server.url("/b/" + NAME)]
    with pytest.raises(dl.WeightsDownloadError) as info:
        dl.fetch(urls, NAME, progress=False)
    message = str(info.value)
    assert message.startswith(f"Downloading {urls[0]} to {cache / NAME} failed: "
                              "the disk is full (No space left on device)")
    assert "Free space on the disk that holds" in message
    assert "KERAS_SENET_CACHE" in message and message.count("Downloading") == 1
    assert isinstance(info.value.__cause__, OSError)
    assert server.requests == ["/a/" + NAME]  # another URL would not help
    assert files_in(cache) == []


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_files_moved_into_place_follow_the_umask(dl, server, cache, umask):
    server.routes["/" + NAME] = Route(PAYLOAD)
    old = os.umask(umask)
    try:
        path = dl.fetch(server.url("/" + NAME), NAME, progress=False)
        with dl.atomic_write(cache / "x.weights.h5") as tmp:
            Path(tmp).write_bytes(b"w")
    finally:
        os.umask(old)
    for written in (Path(path), cache / "x.weights.h5"):
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask, written


def test_unwritable_empty_cache_with_a_subdirectory(dl, tmp_path, monkeypatch):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    candidates = [read_only, Path("/proc/self")]
    directory = next((d for d in candidates if _refuses_writes(d)), None)
    try:
        if directory is None:
            pytest.skip("no directory that refuses writes to this user")
        monkeypatch.setenv("KERAS_SENET_CACHE", str(directory))
        with pytest.raises(dl.WeightsDownloadError, match="KERAS_SENET_CACHE") as info:
            dl.cache_dir("keras_senet")
        assert f"{directory}{os.sep}keras_senet cannot be written" in str(info.value)
        with pytest.raises(dl.WeightsDownloadError, match="KERAS_SENET_CACHE"):
            with dl.atomic_write(directory / "x.weights.h5"):
                pass
    finally:
        read_only.chmod(0o755)


# --- Full SHA-256 pins and server-stated digests. ----------------------------


def test_pin_file_in_sha256sum_format(dl, tmp_path, monkeypatch):
    other = "f" * 64
    pins = tmp_path / "SHA256SUMS"
    pins.write_text(
        "# weights we trust\n\n"
        f"{DIGEST.upper()}  downloads/{NAME}\n"
        f"{other} *se_resnet18-4bb0ce65.pth\n"
        f"{dl.format_sha256_line(DIGEST[::-1], 'x.safetensors')}\n"
    )
    assert dl.pinned_sha256(NAME) is None  # variable unset
    monkeypatch.setenv("KERAS_SENET_SHA256_FILE", str(pins))
    assert dl.pinned_sha256(NAME) == DIGEST
    assert dl.pinned_sha256("se_resnet18-4bb0ce65.pth") == other
    assert dl.pinned_sha256("x.safetensors") == DIGEST[::-1]
    assert dl.pinned_sha256("unlisted.pth") is None


def test_pin_file_written_by_sha256sum(dl, tmp_path, monkeypatch):
    (tmp_path / NAME).write_bytes(PAYLOAD)
    sha256sum = shutil.which("sha256sum")
    if sha256sum is None:
        pytest.skip("no sha256sum here")
    for flag in ("--text", "--binary"):
        out = subprocess.run([sha256sum, flag, NAME], cwd=tmp_path, check=True,
                             capture_output=True, text=True).stdout
        (tmp_path / "pins").write_text(out)
        monkeypatch.setenv("KERAS_SENET_SHA256_FILE", str(tmp_path / "pins"))
        assert dl.pinned_sha256(NAME) == DIGEST
    assert out == dl.format_sha256_line(DIGEST, NAME).replace("  ", " *") + "\n"


@pytest.mark.parametrize("content, line", [
    (f"{DIGEST}\n", 1),
    (f"# ok\n{DIGEST[:63]}  {NAME}\n", 2),
    (f"{DIGEST}  {NAME}\n{'0' * 64}  {NAME}\n", 2),  # two digests for one file
])
def test_malformed_pin_file_names_file_and_line(dl, server, tmp_path, monkeypatch,
                                                content, line):
    pins = tmp_path / "pins.txt"
    pins.write_text(content)
    monkeypatch.setenv("KERAS_SENET_SHA256_FILE", str(pins))
    with pytest.raises(ValueError, match=rf"pins\.txt \(KERAS_SENET_SHA256_FILE\), line {line}:"):
        dl.fetch(server.url("/" + NAME), NAME)
    monkeypatch.setenv("KERAS_SENET_SHA256_FILE", str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="missing.txt cannot be read"):
        dl.pinned_sha256(NAME)
    assert server.requests == []


def test_pinned_digest_is_enforced_on_downloads_and_cached_files(dl, server, cache,
                                                                 tmp_path, monkeypatch):
    # A second preimage of the 8-digit prefix passes the prefix check alone.
    server.routes["/" + NAME] = Route(PAYLOAD)
    pins = tmp_path / "pins"
    pins.write_text(dl.format_sha256_line("0" * 56 + DIGEST[-8:], NAME) + "\n")
    monkeypatch.setenv("KERAS_SENET_SHA256_FILE", str(pins))
    with pytest.raises(dl.WeightsDownloadError, match=r"pins 0{56}.*got " + DIGEST):
        dl.fetch(server.url("/" + NAME), NAME, sha256_prefix=DIGEST[:8], progress=False)
    assert files_in(cache) == []
    pins.write_text(dl.format_sha256_line(DIGEST, NAME) + "\n")
    path = dl.fetch(server.url("/" + NAME), NAME, sha256_prefix=DIGEST[:8], progress=False)
    # A cached copy changed afterwards is not used.
    Path(path).write_bytes(PAYLOAD[:-1] + b"\0")
    server.routes["/" + NAME] = Route(b"gone", 404, "text/plain")
    with pytest.warns(UserWarning, match="KERAS_SENET_SHA256_FILE"):
        with pytest.raises(dl.WeightsDownloadError, match="404"):
            dl.fetch(server.url("/" + NAME), NAME, progress=False)
    assert files_in(cache) == []


def _hub(server, target_route, linked_etag):
    """A /resolve/ URL that redirects to a CDN path, as the hub does."""
    server.routes["/cdn/blob"] = target_route
    server.routes["/timm/m/resolve/main/model.safetensors"] = Route(
        b"", 302, headers={"Location": "/cdn/blob", "X-Linked-Etag": linked_etag},
    )
    return server.url("/timm/m/resolve/main/model.safetensors")


def test_the_digest_the_hub_states_is_checked_and_returned(dl, server, cache):
    url = _hub(server, Route(PAYLOAD, headers={"ETag": '"d41d8cd98f00"'}),
               f'"{DIGEST}"')
    fetched = dl.fetch_with_digest(url, "model.safetensors", progress=False)
    assert fetched == dl.Fetched(str(cache / "model.safetensors"), DIGEST, url, DIGEST)
    assert server.requests[-2:] == ["/timm/m/resolve/main/model.safetensors", "/cdn/blob"]
    # Cached: no network, the digest of the file.
    again = dl.fetch_with_digest(url, "model.safetensors", progress=False)
    assert again == dl.Fetched(fetched.path, DIGEST) and len(server.requests) == 2


def test_a_body_that_does_not_match_the_stated_digest_is_refused(dl, server, cache):
    url = _hub(server, Route(PAYLOAD), f'"{"a" * 64}"')
    with pytest.raises(dl.WeightsDownloadError) as info:
        dl.fetch(url, "model.safetensors", progress=False)
    assert f"the server stated {'a' * 64}, the body hashes to {DIGEST}" in str(info.value)
    assert files_in(cache) == []
    # An ETag that is a SHA-256 counts too; one that is not is ignored.
    server.routes["/etag/" + NAME] = Route(PAYLOAD, headers={"ETag": f'"{"b" * 64}"'})
    with pytest.raises(dl.WeightsDownloadError, match="the server stated b{64}"):
        dl.fetch(server.url("/etag/" + NAME), NAME, progress=False)
    server.routes["/plain/" + NAME] = Route(PAYLOAD, headers={"ETag": '"5f3a-12"'})
    fetched = dl.fetch_with_digest(server.url("/plain/" + NAME), NAME, progress=False)
    assert fetched.sha256 == DIGEST and fetched.server_sha256 is None
