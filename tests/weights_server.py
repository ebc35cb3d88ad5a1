"""Test helpers for the weights paths: a local HTTP server that stands in for
GitHub and the Hugging Face hub, and the publishing of checkpoints under a
registry record (the record's sources pointed at files made in the test).

Used by test_weights.py and test_pretrained.py; nothing here touches the
internet (the server listens on 127.0.0.1 and is reached through
``KERAS_SENET_WEIGHTS_URL``, the mirror variable).
"""

import dataclasses
import hashlib
import http.server
import json
import os
import struct
import threading

import pytest

from keras_senet import zoo


class Server:
    """A local HTTP server over a directory that records each request.

    ``headers[filename]`` adds response headers for that file (e.g. the
    hub's ``X-Linked-ETag``); a file that is not there answers 404.
    """

    def __init__(self, directory):
        self.directory = directory
        self.requests = []
        self.headers = {}
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def end_headers(self):
                for key, value in server.headers.get(self.path.lstrip("/"), {}).items():
                    self.send_header(key, value)
                super().end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A `Server` over a fresh directory, reached as the mirror, with an
    empty cache of this test's own and no offline mode or pinned digests."""
    serve_dir = tmp_path / "served"
    serve_dir.mkdir()
    srv = Server(serve_dir)
    monkeypatch.setenv("KERAS_SENET_WEIGHTS_URL", srv.url)
    monkeypatch.setenv("KERAS_SENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KERAS_SENET_OFFLINE", raising=False)
    monkeypatch.delenv("KERAS_SENET_SHA256_FILE", raising=False)
    yield srv
    srv.close()


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def hash_named(path):
    """Renames ``path`` to ``<stem>-<first 8 hex digits of its SHA-256>.pth``,
    as published GitHub release files are named; returns the new path."""
    named = path.with_name(f"{path.stem}-{sha256(path)[:8]}.pth")
    path.rename(named)
    return named


def publish(monkeypatch, server, name, *, pth=None, safetensors=None, serve=True):
    """Points record ``name``'s sources at ``pth`` (its GitHub file) and
    ``safetensors`` (its hub file) and serves them (``serve=False``: the
    GitHub file is left off the server, which then answers 404 for it).

    A record without a GitHub source gets none; one without a file for a
    source keeps that source's name (not served: 404). Returns the record.
    """
    record = zoo.REGISTRY[name]
    sources = []
    for source in record.sources:
        if source.host == "github" and pth is not None:
            source = dataclasses.replace(
                source, filename=pth.name, sha256_prefix=pth.stem.rsplit("-", 1)[1]
            )
            if serve and pth.parent != server.directory:
                (server.directory / pth.name).write_bytes(pth.read_bytes())
        elif source.host == "hub" and safetensors is not None:
            (server.directory / source.filename).write_bytes(safetensors.read_bytes())
        sources.append(source)
    record = dataclasses.replace(record, sources=tuple(sources))
    monkeypatch.setitem(zoo.REGISTRY, record.name, record)
    return record


def cache_files():
    """The files in the weights cache (lock files aside), sorted."""
    root = os.path.join(os.environ["KERAS_SENET_CACHE"], "keras_senet")
    if not os.path.isdir(root):
        return []
    return sorted(f for f in os.listdir(root) if not f.endswith(".lock"))


# --- safetensors files that lie ----------------------------------------------


def read_safetensors_header(path):
    data = open(path, "rb").read()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def write_safetensors(path, header, body, length=None):
    """Writes ``header`` (a dict) and ``body``; ``length`` overrides the
    declared header length."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    declared = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", declared) + raw + body)
    return path


def lying_safetensors(good, out_dir):
    """``{problem: path}``: copies of the safetensors file ``good`` whose
    header lies in one way each."""
    header, body = read_safetensors_header(good)
    names = [k for k in header if k != "__metadata__"]
    by_offset = sorted(names, key=lambda k: header[k]["data_offsets"][0])
    last, first = by_offset[-1], by_offset[0]
    out = {}

    past_end = json.loads(json.dumps(header))
    begin, end = past_end[last]["data_offsets"]
    past_end[last]["data_offsets"] = [begin + 64, end + 64]
    out["offsets past the end"] = write_safetensors(out_dir / "past_end.safetensors", past_end, body)

    # Two tensors of one size sharing their bytes.
    sizes = {}
    for k in by_offset:
        span = header[k]["data_offsets"][1] - header[k]["data_offsets"][0]
        sizes.setdefault((span, header[k]["dtype"]), []).append(k)
    a, b = next(v for v in sizes.values() if len(v) >= 2)[:2]
    overlap = json.loads(json.dumps(header))
    overlap[b]["data_offsets"] = list(overlap[a]["data_offsets"])
    out["overlapping tensors"] = write_safetensors(out_dir / "overlap.safetensors", overlap, body)

    dtype = json.loads(json.dumps(header))
    dtype[first]["dtype"] = "Q7"
    out["unknown dtype"] = write_safetensors(out_dir / "dtype.safetensors", dtype, body)

    # A known dtype of the right size that no weight has.
    integer = json.loads(json.dumps(header))
    floats = [k for k in by_offset if integer[k]["dtype"] == "F32"]
    integer[floats[0]]["dtype"] = "I32"
    out["integer weights"] = write_safetensors(out_dir / "integer.safetensors", integer, body)

    out["huge header length"] = write_safetensors(
        out_dir / "huge.safetensors", header, body, length=1 << 40
    )
    return out
