"""Published weights: fidelity against timm's reference models, and the paths
a user takes through `weights="imagenet"` and `weights=<path>`.

For every model in the registry, timm's ``legacy_*`` model (the exact
architecture of the published file) is built with random weights and
randomised BatchNorm statistics, saved with torch, served from a local HTTP
server (the registry's file name is given that file's own hash), and loaded
through ``weights="imagenet"`` and through a path. Our logits must equal
timm's.
"""

import dataclasses
import functools
import hashlib
import http.server
import json
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import keras  # noqa: E402

import keras_senet  # noqa: E402
from keras_senet import zoo  # noqa: E402
from weights.reference import TIMM_NAMES  # noqa: E402
from weights.reference import conditioned_reference  # noqa: E402

TOLERANCE = 1e-4  # max |logit difference|, float32


class _Server:
    """A local HTTP server over a directory that records each request."""

    def __init__(self, directory):
        self.directory = directory
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

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
    serve_dir = tmp_path / "served"
    serve_dir.mkdir()
    srv = _Server(serve_dir)
    monkeypatch.setenv("KERAS_SENET_WEIGHTS_URL", srv.url)
    monkeypatch.setenv("KERAS_SENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KERAS_SENET_OFFLINE", raising=False)
    yield srv
    srv.close()


@functools.lru_cache(maxsize=2)
def _reference(name, seed=0):
    return conditioned_reference(name, seed)


def _save(state_dict, directory, stem, legacy):
    """torch.save into ``directory``; the name carries the SHA-256 prefix."""
    tmp = directory / f"{stem}.tmp"
    torch.save(state_dict, tmp, _use_new_zipfile_serialization=not legacy)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = directory / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path


def _publish(monkeypatch, server, name, path):
    """Serves ``path`` as the published file of ``name``."""
    info = dataclasses.replace(zoo.REGISTRY[name], filename=path.name)
    if path.parent != server.directory:
        (server.directory / path.name).write_bytes(path.read_bytes())
    monkeypatch.setitem(zoo.REGISTRY, name, info)
    return info


def _inputs(shape=(2, 3, 99, 123), seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype("float32")
    return x, np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def _torch_logits(model, x_nchw):
    with torch.no_grad():
        return model(torch.from_numpy(x_nchw)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_logits_match_timm_reference(name, server, monkeypatch, tmp_path):
    assert set(TIMM_NAMES) == set(zoo.list_weights())
    ref = _reference(name)
    sd = ref.state_dict()
    # The published files use the legacy format: serve that one.
    legacy = _save(sd, server.directory, name, legacy=True)
    zipped = _save(sd, tmp_path, name + "_zip", legacy=False)
    _publish(monkeypatch, server, name, legacy)
    x_nchw, x_nhwc = _inputs()
    want = _torch_logits(ref, x_nchw)

    model = keras_senet.create_model(
        name, weights="imagenet", classifier_activation=None, input_shape=(None, None, 3)
    )
    got = model.predict(x_nhwc, verbose=0)
    assert np.abs(got - want).max() <= TOLERANCE, np.abs(got - want).max()
    assert server.requests == [f"/{legacy.name}"]

    # Converted once, cached with its hash: no network, no conversion.
    info = zoo.REGISTRY[name]
    cached = os.path.join(os.environ["KERAS_SENET_CACHE"], "keras_senet",
                          info.converted_filename)
    manifest = json.load(open(cached + ".json"))
    assert manifest["sha256"] == hashlib.sha256(open(cached, "rb").read()).hexdigest()
    monkeypatch.setenv("KERAS_SENET_OFFLINE", "1")
    again = keras_senet.create_model(
        name, weights="imagenet", classifier_activation=None, input_shape=(None, None, 3)
    )
    np.testing.assert_array_equal(again.predict(x_nhwc, verbose=0), got)
    assert len(server.requests) == 1

    # The zip format, loaded by path and converted on the fly.
    from_path = keras_senet.create_model(
        name, weights=str(zipped), classifier_activation=None,
        input_shape=(None, None, 3),
    )
    got_path = from_path.predict(x_nhwc, verbose=0)
    assert np.abs(got_path - want).max() <= TOLERANCE


def test_backbone_only_and_new_classes(server, monkeypatch, caplog):
    ref = _reference("se_resnet18")
    _publish(monkeypatch, server, "se_resnet18",
             _save(ref.state_dict(), server.directory, "seresnet18", legacy=True))
    x_nchw, x_nhwc = _inputs((1, 3, 77, 64))
    with torch.no_grad():
        want = ref.forward_features(torch.from_numpy(x_nchw)).numpy()
    features = keras_senet.SEResNet18(weights="imagenet", include_top=False)
    got = features.predict(x_nhwc, verbose=0)
    np.testing.assert_allclose(got, np.transpose(want, (0, 2, 3, 1)), atol=TOLERANCE)

    with caplog.at_level(logging.WARNING, logger="keras_senet.zoo"):
        ten = keras_senet.SEResNet18(weights="imagenet", classes=10)
    assert "freshly initialised" in caplog.text
    np.testing.assert_array_equal(
        ten.get_layer("conv1_conv").kernel.numpy(),
        features.get_layer("conv1_conv").kernel.numpy(),
    )
    assert ten.get_layer("logits").kernel.shape == (512, 10)
    assert len(server.requests) == 1  # both loads used one download


def test_offline_without_cache_names_the_file(server, monkeypatch):
    monkeypatch.setenv("KERAS_SENET_OFFLINE", "1")
    info = zoo.REGISTRY["se_resnet34"]
    with pytest.raises(OSError) as excinfo:
        keras_senet.SEResNet34(weights="imagenet")
    message = str(excinfo.value)
    assert info.filename in message
    assert os.environ["KERAS_SENET_CACHE"] in message
    assert server.requests == []


def _cache_files():
    root = os.path.join(os.environ["KERAS_SENET_CACHE"], "keras_senet")
    if not os.path.isdir(root):
        return []
    return sorted(f for f in os.listdir(root) if not f.endswith(".lock"))


def test_checkpoint_of_another_model_is_rejected_and_not_cached(server, monkeypatch):
    # SE-ResNet-18's weights published under SE-ResNet-34's name.
    ref = _reference("se_resnet18")
    path = _save(ref.state_dict(), server.directory, "seresnet34", legacy=True)
    _publish(monkeypatch, server, "se_resnet34", path)
    with pytest.raises((ValueError, OSError)) as excinfo:
        keras_senet.SEResNet34(weights="imagenet")
    message = str(excinfo.value)
    assert path.name in message
    assert "layer2.0.conv1.weight" in message or "missing" in message
    assert _cache_files() == []


def test_html_page_and_truncated_file_are_rejected(server, monkeypatch):
    ref = _reference("se_resnet18")
    good = _save(ref.state_dict(), server.directory, "seresnet18", legacy=True)
    # An error page saved under the checkpoint's name.
    (server.directory / good.name).write_bytes(
        b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"
    )
    _publish(monkeypatch, server, "se_resnet18", good)
    with pytest.raises(OSError, match=good.name):
        keras_senet.SEResNet18(weights="imagenet")
    assert _cache_files() == []
    # The first half of a real checkpoint (hash of the whole one).
    data = good.with_suffix(".full")
    torch.save(ref.state_dict(), data, _use_new_zipfile_serialization=False)
    blob = data.read_bytes()
    (server.directory / good.name).write_bytes(blob[: len(blob) // 2])
    digest = hashlib.sha256(blob).hexdigest()[:8]
    renamed = server.directory / f"seresnet18-{digest}.pth"
    (server.directory / good.name).rename(renamed)
    _publish(monkeypatch, server, "se_resnet18", renamed)
    with pytest.raises(OSError, match=digest):
        keras_senet.SEResNet18(weights="imagenet")
    assert _cache_files() == []


def test_imagenet_for_a_model_without_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="No published ImageNet weights"):
        zoo.load_into(None, "imagenet", model_id="se_resnet99",
                      include_top=True, classes=1000)
    with pytest.raises(ValueError, match="name='resnet50'"):
        zoo.get_weights_info("resnet50")


def test_bad_weights_path_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"0")
    with pytest.raises(ValueError, match="weights.npz"):
        keras_senet.SEResNet18(weights=str(path))


def test_registry_entries_are_consistent():
    for name, info in zoo.REGISTRY.items():
        assert name in keras_senet.list_models()
        assert info.url.endswith("/" + info.filename)
        assert info.url.startswith("https://github.com/rwightman/pytorch-image-models/")
        assert len(info.sha256_prefix) >= 8
        int(info.sha256_prefix, 16)
        assert info.crop_pct == 0.875 and info.input_size == 224
        assert info.interpolation in ("bilinear", "bicubic")
        if info.top1 is not None:
            assert 70 < info.top1 < 82 and info.top1 < info.top5 < 96


@pytest.mark.slow
def test_concurrent_first_loads_end_with_one_good_file(server, monkeypatch, tmp_path):
    """Every rank of a job loading the weights at once: one download, one file."""
    ref = _reference("se_resnet18")
    path = _save(ref.state_dict(), server.directory, "seresnet18", legacy=True)
    x_nchw, x_nhwc = _inputs((1, 3, 64, 64))
    want = _torch_logits(ref, x_nchw)
    np.save(tmp_path / "x.npy", x_nhwc)
    code = f"""
import dataclasses, sys, numpy as np
from keras_senet import zoo
zoo.REGISTRY["se_resnet18"] = dataclasses.replace(
    zoo.REGISTRY["se_resnet18"], filename={path.name!r})
import keras_senet
m = keras_senet.SEResNet18(weights="imagenet", classifier_activation=None,
                           input_shape=(None, None, 3))
np.save(sys.argv[1], m.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0))
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"out{i}.npy")],
                         env=env, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    for i in range(3):
        got = np.load(tmp_path / f"out{i}.npy")
        assert np.abs(got - want).max() <= TOLERANCE
    assert server.requests == [f"/{path.name}"]
    converted = dataclasses.replace(
        zoo.REGISTRY["se_resnet18"], filename=path.name
    ).converted_filename
    assert _cache_files() == sorted([path.name, converted, converted + ".json"])


def test_convert_tool_reports_hash_and_parity(tmp_path):
    ref = _reference("se_resnext26_32x4d")
    ckpt = _save(ref.state_dict(), tmp_path, "seresnext26", legacy=True)
    out = tmp_path / "converted.weights.h5"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "weights.convert", str(ckpt), "--model",
         "se_resnext26_32x4d", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    diff = float(lines["parity:"].split("=")[1].split()[0])
    assert diff <= TOLERANCE
    # The converted file loads into the builder by path.
    model = keras_senet.SEResNeXt26(weights=str(out), classifier_activation=None,
                                    input_shape=(64, 64, 3))
    x_nchw, x_nhwc = _inputs((1, 3, 64, 64))
    np.testing.assert_allclose(
        model.predict(x_nhwc, verbose=0), _torch_logits(ref, x_nchw), atol=TOLERANCE
    )
