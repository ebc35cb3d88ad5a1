"""Published weights: fidelity against timm's reference models, and the paths
a user takes through `weights="imagenet"` and `weights=<path>`.

For every model in the registry, timm's ``legacy_*`` model (the exact
architecture of the published file) is built with random weights and
randomised BatchNorm statistics, saved with torch, served from a local HTTP
server (the registry's file name is given that file's own hash), and loaded
through ``weights="imagenet"`` and through a path. Our logits must equal
timm's.
"""

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import keras  # noqa: E402

import keras_senet  # noqa: E402
from keras_senet import zoo  # noqa: E402
from weights.reference import TIMM_NAMES  # noqa: E402
from weights.reference import conditioned_reference  # noqa: E402
from weights_server import cache_files as _cache_files  # noqa: E402
from weights_server import publish  # noqa: E402
from weights_server import server  # noqa: E402,F401 (a fixture)

TOLERANCE = 1e-4  # max |logit difference|, float32


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
    return publish(monkeypatch, server, name, pth=path)


def _inputs(shape=(2, 3, 99, 123), seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype("float32")
    return x, np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def _torch_logits(model, x_nchw):
    with torch.no_grad():
        return model(torch.from_numpy(x_nchw)).numpy()


# Deeper versions of the designs above (more blocks per stage, same mapping
# rules): their published files are checked through weights="imagenet" at
# full depth, and the cache and the zip format on the smaller models only.
DEEP = ("se_resnet101", "se_resnet152", "se_resnext101_32x4d")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_logits_match_timm_reference(name, server, monkeypatch, tmp_path):
    assert set(TIMM_NAMES) == {r.model for r in zoo.REGISTRY.values() if r.tag == "in1k"}
    ref = _reference(name)
    sd = ref.state_dict()
    # The published files use the legacy format: serve that one.
    legacy = _save(sd, server.directory, name, legacy=True)
    zipped = None if name in DEEP else _save(sd, tmp_path, name + "_zip", legacy=False)
    _publish(monkeypatch, server, name, legacy)
    x_nchw, x_nhwc = _inputs()
    want = _torch_logits(ref, x_nchw)

    model = keras_senet.create_model(
        name, weights="imagenet", classifier_activation=None, input_shape=(None, None, 3)
    )
    got = model.predict(x_nhwc, verbose=0)
    assert np.abs(got - want).max() <= TOLERANCE, np.abs(got - want).max()
    assert server.requests == [f"/{legacy.name}"]
    if name in DEEP:
        return

    # Converted once, cached with its hash: no network, no conversion.
    info = zoo.get_weights_info(name)
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

    with caplog.at_level(logging.WARNING, logger="keras_senet.pretrained"):
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
    assert "KERAS_SENET_WEIGHTS_URL" in message  # the remedies
    assert server.requests == []


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


def test_imagenet_for_a_model_without_weights_is_a_clear_error(monkeypatch):
    without = zoo.Registry((k, r) for k, r in zoo.REGISTRY.items() if r.model != "se_resnet18")
    monkeypatch.setattr(zoo, "REGISTRY", without)
    with pytest.raises(ValueError, match="No published ImageNet weights exist for 'se_resnet18'"):
        keras_senet.SEResNet18(weights="imagenet")
    with pytest.raises(ValueError, match="name='resnet50'"):
        zoo.get_weights_info("resnet50")


def test_bad_weights_path_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"0")
    with pytest.raises(ValueError, match="weights.npz"):
        keras_senet.SEResNet18(weights=str(path))


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
record = zoo.REGISTRY["se_resnet18"]
zoo.REGISTRY[record.name] = dataclasses.replace(record, sources=(dataclasses.replace(
    record.sources[0], filename={path.name!r}, sha256_prefix={path.stem.rsplit("-", 1)[1]!r}),))
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
    converted = f"se_resnet18-{path.stem.rsplit('-', 1)[1]}.weights.h5"
    assert _cache_files() == sorted(
        [path.name, path.name + ".json", converted, converted + ".json"]
    )


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


def _convert_main(capsys, *argv):
    """``python -m weights.convert`` in this process: (exit status, out, err)."""
    from weights import convert as tool

    try:
        status = tool.main([str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_convert_tool_takes_safetensors_and_answers_mistakes_in_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    ref = _reference("se_resnet18")
    st = tmp_path / "seresnet18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, st)
    out = tmp_path / "seresnet18.weights.h5"
    status, stdout, _ = _convert_main(capsys, st, "--model", "se_resnet18", "--out", out)
    assert status == 0
    lines = dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)
    assert lines["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert float(lines["parity:"].split("=")[1].split()[0]) <= TOLERANCE

    # A missing file, then a file of the other layout: one line, status 2.
    def one_error_line(err):
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    status, _, err = _convert_main(
        capsys, tmp_path / "nope.pth", "--model", "se_resnet18", "--out", out)
    assert status == 2 and "nope.pth" in one_error_line(err)
    status, _, err = _convert_main(capsys, st, "--model", "seresnet50", "--out", out)
    line = one_error_line(err)
    assert status == 2
    assert "'legacy'" in line and "'timm'" in line and "se_resnet18" in line  # the layout hint


def _save_h5(model, path):
    model.save_weights(path)
    return str(path)


def test_weights_file_of_another_head_loads_the_backbone(tmp_path, caplog):
    """A 1000-class .weights.h5 into a 5-class model loads the backbone, as
    weights="imagenet" does (it was a shape error)."""
    source = keras_senet.SEResNet18(weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for v in source.weights:
        v.assign(rng.normal(size=v.shape).astype("float32") * 0.05 + 1.0 * ("variance" in v.path))
    path = _save_h5(source, tmp_path / "full.weights.h5")
    with caplog.at_level(logging.WARNING, logger="keras_senet.pretrained"):
        five = keras_senet.SEResNet18(weights=path, classes=5, input_shape=(64, 64, 3))
    assert "freshly initialised" in caplog.text
    assert five.get_layer("logits").kernel.shape == (512, 5)
    for name in ("conv1_conv", "conv5_block2_se", "conv5_block2_2_bn"):
        for got, want in zip(five.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    # And into a backbone without a head; a file without a head into a model
    # with one (its head is new).
    backbone = keras_senet.SEResNet18(weights=path, include_top=False)
    np.testing.assert_array_equal(backbone.get_layer("conv1_conv").kernel.numpy(),
                                  source.get_layer("conv1_conv").kernel.numpy())
    headless = _save_h5(backbone, tmp_path / "backbone.weights.h5")
    ten = keras_senet.SEResNet18(weights=headless, classes=10)
    np.testing.assert_array_equal(ten.get_layer("conv2_block1_se").get_weights()[0],
                                  source.get_layer("conv2_block1_se").get_weights()[0])

    # Other channel counts: timm's rule on the stem kernel.
    kernel = source.get_layer("conv1_conv").kernel.numpy()
    grey = keras_senet.SEResNet18(weights=path, include_top=False, input_shape=(None, None, 1))
    np.testing.assert_allclose(grey.get_layer("conv1_conv").kernel.numpy(),
                               kernel.sum(axis=2, keepdims=True), rtol=1e-6)
    rgbn = keras_senet.SEResNet18(weights=path, include_top=False, input_shape=(None, None, 4))
    np.testing.assert_allclose(rgbn.get_layer("conv1_conv").kernel.numpy(),
                               kernel[:, :, [0, 1, 2, 0]] * 3 / 4, rtol=1e-6)
    # ... and back: a 4-channel file into a 4-channel model loads as is.
    back = keras_senet.SEResNet18(weights=_save_h5(rgbn, tmp_path / "rgbn.weights.h5"),
                                  include_top=False, input_shape=(None, None, 4))
    np.testing.assert_array_equal(back.get_layer("conv1_conv").kernel.numpy(),
                                  rgbn.get_layer("conv1_conv").kernel.numpy())


def test_damaged_cache_manifest_is_no_manifest(server, monkeypatch):
    """A manifest that is null, a list or not JSON broke every later load;
    it now means "not converted yet": converted again from the cached file."""
    ref = _reference("se_resnet18")
    path = _save(ref.state_dict(), server.directory, "seresnet18", legacy=True)
    record = _publish(monkeypatch, server, "se_resnet18", path)
    x_nchw, x_nhwc = _inputs((1, 3, 64, 64))
    first = keras_senet.SEResNet18(weights="imagenet", classifier_activation=None,
                                   input_shape=(None, None, 3))
    want = first.predict(x_nhwc, verbose=0)
    cached = os.path.join(os.environ["KERAS_SENET_CACHE"], "keras_senet",
                          record.converted_filename)
    monkeypatch.setenv("KERAS_SENET_OFFLINE", "1")  # from the cached .pth
    for manifest in ("null", "[1, 2]", "{not json"):
        with open(cached + ".json", "w") as f:
            f.write(manifest)
        again = keras_senet.SEResNet18(weights="imagenet", classifier_activation=None,
                                       input_shape=(None, None, 3))
        np.testing.assert_array_equal(again.predict(x_nhwc, verbose=0), want)
        assert isinstance(json.load(open(cached + ".json")), dict)
    assert len(server.requests) == 1


def _zoo_main(capsys, *argv):
    try:
        status = zoo.main(list(argv))
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_zoo_command_line(server, monkeypatch, capsys):
    ref = _reference("se_resnet18")
    path = _save(ref.state_dict(), server.directory, "seresnet18", legacy=True)
    _publish(monkeypatch, server, "se_resnet18", path)
    # Offline without the file, an unknown name: one line, status 2.
    monkeypatch.setenv("KERAS_SENET_OFFLINE", "1")
    status, out, err = _zoo_main(capsys, "download", "se_resnet18")
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "KERAS_SENET_OFFLINE" in err
    status, _, err = _zoo_main(capsys, "download", "se_resnet99")
    assert status == 2 and "se_resnet99" in err and "Traceback" not in err
    # Online: the downloaded file's full SHA-256 in sha256sum format.
    monkeypatch.delenv("KERAS_SENET_OFFLINE")
    status, out, _ = _zoo_main(capsys, "download", "se_resnet18.in1k")
    assert status == 0
    assert out.splitlines() == [f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}"]
    status, out, _ = _zoo_main(capsys, "list", "--markdown")
    assert status == 0
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == list(zoo.REGISTRY)
