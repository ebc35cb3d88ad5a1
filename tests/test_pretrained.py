"""timm's SE-ResNet / SE-ResNeXt family through the public weights API.

For every architecture, timm's model (random weights, conditioned like a
trained network by weights/reference.py) is saved as a ``.pth`` and as a
``.safetensors``, and loaded through ``weights="imagenet"`` from a local
HTTP server standing in for GitHub and the hub (the record's GitHub file
missing, so the loader falls back to the hub's file) and through
``weights=<path>``: our logits must equal timm's. The models have one block
per stage (``layers=(1, 1, 1, 1)`` in timm and in our variant table): every
feature of each design (stems, anti-aliasing, average-pool shortcuts,
groups and widths, the SE widths, the head) at a fraction of the cost;
tests/test_timm_arch.py checks the full depths against timm.

Then what must be refused, through the same public API: safetensors
headers that lie, a checkpoint of another model, a file that is not what
the hub says it is, and an ImageNet-12k checkpoint under a 1000-class head:
each with an error naming the problem, and nothing left in the cache.
"""

import dataclasses
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

import keras  # noqa: E402

import keras_senet  # noqa: E402
from keras_senet import zoo  # noqa: E402
from keras_senet.models import senet  # noqa: E402
from weights.reference import TIMM_RESNETS  # noqa: E402
from weights.reference import conditioned_reference  # noqa: E402
from weights_server import cache_files  # noqa: E402
from weights_server import hash_named  # noqa: E402
from weights_server import lying_safetensors  # noqa: E402
from weights_server import publish  # noqa: E402
from weights_server import sha256  # noqa: E402
from weights_server import server  # noqa: E402,F401 (a fixture)

TOLERANCE = 1e-4  # max |logit difference|, float32
SHALLOW = (1, 1, 1, 1)


@pytest.fixture(scope="module", autouse=True)
def shallow_variants():
    """Our variants at timm's test depth, for this module only."""
    with pytest.MonkeyPatch.context() as mp:
        for name in TIMM_RESNETS:
            mp.setitem(senet.VARIANTS, name, dict(senet.VARIANTS[name], layers=SHALLOW))
        yield


def _inputs(name, seed=0):
    # The anti-aliased models need even sides at every stage (timm's too).
    h, w = (64, 96) if senet.VARIANTS[name].get("aa") else (67, 75)
    x = np.random.default_rng(seed).normal(size=(2, 3, h, w)).astype("float32")
    return x, np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def _save(reference, directory, stem):
    """The reference's state dict as a hash-named .pth and a .safetensors."""
    state_dict = reference.state_dict()
    pth = directory / f"{stem}.pth"
    torch.save(state_dict, pth)
    st = directory / f"{stem}.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, st)
    return hash_named(pth), st


@pytest.fixture(scope="module", params=TIMM_RESNETS)
def checkpoint(request, tmp_path_factory):
    """(name, timm reference, .pth, .safetensors, x NHWC, timm's logits)."""
    name = request.param
    reference = conditioned_reference(name, layers=SHALLOW)
    pth, st = _save(reference, tmp_path_factory.mktemp(name), name)
    x_nchw, x_nhwc = _inputs(name)
    with torch.no_grad():
        want = reference(torch.from_numpy(x_nchw)).numpy()
    yield name, reference, pth, st, x_nhwc, want
    keras.backend.clear_session()


def _max_diff(model, x, want):
    return float(np.abs(np.asarray(model(x, training=False)) - want).max())


def test_every_architecture_loads_from_the_hub_and_from_a_path(checkpoint, server, monkeypatch):
    name, _, pth, st, x, want = checkpoint
    default = zoo.REGISTRY[name]  # the default tag
    record = publish(monkeypatch, server, default.name, pth=pth, safetensors=st, serve=False)
    hub = record.sources[-1]

    model = keras_senet.create_model(
        name, weights="imagenet", classifier_activation=None, input_shape=(None, None, 3)
    )
    assert _max_diff(model, x, want) <= TOLERANCE
    # Every source in order: the GitHub file (absent: 404), then the hub's.
    github = [s for s in record.sources if s.host == "github"]
    assert server.requests == [f"/{s.filename}" for s in github] + [f"/{hub.filename}"]
    # Cached: the hub file with the SHA-256 recorded at its first download,
    # and the conversion with its manifest.
    assert cache_files() == sorted([
        hub.filename, hub.filename + ".json",
        record.converted_filename, record.converted_filename + ".json",
    ])
    assert keras_senet.pretrained.cached_files(record)[0].endswith(hub.filename)

    from_path = keras_senet.create_model(
        name, weights=str(pth), classifier_activation=None, input_shape=(None, None, 3)
    )
    assert _max_diff(from_path, x, want) <= TOLERANCE


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One small architecture's checkpoint for the tests below."""
    reference = conditioned_reference("seresnext26d_32x4d", layers=SHALLOW)
    pth, st = _save(reference, tmp_path_factory.mktemp("small"), "seresnext26d_32x4d")
    x_nchw, x_nhwc = _inputs("seresnext26d_32x4d")
    with torch.no_grad():
        want = reference(torch.from_numpy(x_nchw)).numpy()
    return dict(reference=reference, pth=pth, st=st, x=x_nhwc, want=want)


def test_github_file_first_then_cached_without_network(small, server, monkeypatch):
    record = publish(monkeypatch, server, "seresnext26d_32x4d.bt_in1k", pth=small["pth"],
                     safetensors=small["st"])
    model = keras_senet.create_model("seresnext26d_32x4d", weights="bt_in1k",
                                     classifier_activation=None)
    assert model.input_shape == (None, 288, 288, 3)  # the tag's eval size
    model = keras_senet.create_model("seresnext26d_32x4d.bt_in1k", weights="imagenet",
                                     classifier_activation=None, input_shape=(None, None, 3))
    assert _max_diff(model, small["x"], small["want"]) <= TOLERANCE
    assert server.requests == [f"/{small['pth'].name}"]  # the hub was not needed
    # Its full SHA-256 is recorded at the first download (its name holds
    # only 32 bits of it).
    assert cache_files() == sorted([
        small["pth"].name, small["pth"].name + ".json",
        record.converted_filename, record.converted_filename + ".json",
    ])
    monkeypatch.setenv("KERAS_SENET_OFFLINE", "1")
    again = keras_senet.create_model("seresnext26d_32x4d", weights="imagenet",
                                     classifier_activation=None, input_shape=(None, None, 3))
    assert _max_diff(again, small["x"], small["want"]) <= TOLERANCE
    assert len(server.requests) == 1


def _hub_only(monkeypatch, server, st):
    """seresnext26d's record with only its hub source, serving ``st``."""
    record = zoo.REGISTRY["seresnext26d_32x4d.bt_in1k"]
    record = dataclasses.replace(record, sources=(record.sources[-1],))
    monkeypatch.setitem(zoo.REGISTRY, record.name, record)
    (server.directory / record.sources[0].filename).write_bytes(st.read_bytes())
    return record


def _load_default():
    return keras_senet.create_model("seresnext26d_32x4d", weights="imagenet",
                                    include_top=False)


LIES = [
    "offsets past the end", "overlapping tensors", "unknown dtype", "integer weights",
    "huge header length",
]
# Words the reader's message uses for each problem.
NAMED = {
    "offsets past the end": "end",
    "overlapping tensors": "overlap|begin",
    "unknown dtype": "dtype",
    "integer weights": "dtype int32",
    "huge header length": "header",
}


@pytest.mark.parametrize("lie", LIES)
def test_safetensors_headers_that_lie_are_refused(lie, small, server, monkeypatch, tmp_path):
    bad = lying_safetensors(small["st"], tmp_path)[lie]
    record = _hub_only(monkeypatch, server, bad)
    with pytest.raises(OSError, match=NAMED[lie]) as excinfo:
        _load_default()
    message = str(excinfo.value)
    assert record.sources[0].filename in message
    assert "KERAS_SENET_WEIGHTS_URL" in message  # the remedies
    assert cache_files() == []
    # Through a path too: the same reader, an error naming the file.
    with pytest.raises(ValueError, match=NAMED[lie]) as excinfo:
        keras_senet.create_model("seresnext26d_32x4d", weights=str(bad), include_top=False)
    assert str(bad) in str(excinfo.value)


def test_checkpoint_of_another_model_is_refused_before_reading(small, server, monkeypatch, tmp_path):
    other = conditioned_reference("seresnext26t_32x4d", layers=SHALLOW)
    _, st = _save(other, tmp_path, "other")
    record = _hub_only(monkeypatch, server, st)
    with pytest.raises(OSError, match="conv1") as excinfo:
        _load_default()
    assert record.sources[0].filename in str(excinfo.value)
    assert cache_files() == []


def test_hub_stated_digest_is_checked(small, server, monkeypatch):
    record = _hub_only(monkeypatch, server, small["st"])
    name = record.sources[0].filename
    server.headers[name] = {"X-Linked-ETag": '"' + "0" * 64 + '"'}
    with pytest.raises(OSError, match="0" * 64):
        _load_default()
    assert cache_files() == []
    server.headers[name] = {"X-Linked-ETag": f'"{sha256(small["st"])}"'}
    _load_default()
    assert name in cache_files()


def test_changed_hub_file_is_refused_after_its_first_download(small, server, monkeypatch, tmp_path):
    record = _hub_only(monkeypatch, server, small["st"])
    name = record.sources[0].filename
    model = _load_default()
    # The cached conversion is lost, and the hub file changes on the server
    # and in the cache: its recorded SHA-256 refuses it.
    for f in cache_files():
        if f.startswith(record.converted_filename):
            os.remove(os.path.join(os.environ["KERAS_SENET_CACHE"], "keras_senet", f))
    other = conditioned_reference("seresnext26d_32x4d", seed=1, layers=SHALLOW)
    _, changed = _save(other, tmp_path, "changed")
    (server.directory / name).write_bytes(changed.read_bytes())
    cached = os.path.join(os.environ["KERAS_SENET_CACHE"], "keras_senet", name)
    with open(cached, "wb") as f:
        f.write(changed.read_bytes())
    with pytest.raises(OSError, match=sha256(small["st"])):
        _load_default()
    assert model is not None


def test_imagenet_12k_backbone_under_a_1000_class_head_is_refused(server):
    for build in (
        lambda: keras_senet.create_model(
            "seresnextaa101d_32x8d.sw_in12k", weights="imagenet", classes=1000),
        lambda: keras_senet.SEResNeXtAA101D_32x8d(weights="sw_in12k"),
        lambda: keras_senet.create_model(
            "seresnextaa101d_32x8d", weights="sw_in12k", include_top=True, classes=1000),
    ):
        with pytest.raises(ValueError, match="11821 classes.*classes=11821.*include_top=False"):
            build()
    assert server.requests == [] and cache_files() == []
    # Its own head by default, through create_model; any other size is new.
    model = keras_senet.create_model("seresnextaa201d_32x8d.sw_in12k", weights=None)
    assert model.output_shape == (None, 11821)


def test_pretrained_weights_adapt_to_other_channel_counts(small, server, monkeypatch):
    """timm's rule for the stem: one channel sums the RGB kernels, more
    repeat them scaled by 3 / C (timm's adapt_input_conv)."""
    publish(monkeypatch, server, "seresnext26d_32x4d.bt_in1k", pth=small["pth"])
    from timm.models import adapt_input_conv

    for channels in (1, 4):
        model = keras_senet.create_model(
            "seresnext26d_32x4d", weights="imagenet", classifier_activation=None,
            input_shape=(None, None, channels),
        )
        state_dict = {k: v.clone() for k, v in small["reference"].state_dict().items()}
        state_dict["conv1.0.weight"] = adapt_input_conv(channels, state_dict["conv1.0.weight"])
        ref = timm.create_model("seresnext26d_32x4d", layers=SHALLOW, in_chans=channels)
        ref.load_state_dict(state_dict)
        x = np.random.default_rng(3).normal(size=(2, channels, 67, 75)).astype("float32")
        with torch.no_grad():
            want = ref.eval()(torch.from_numpy(x)).numpy()
        got = np.asarray(model(np.transpose(x, (0, 2, 3, 1)), training=False))
        assert np.abs(got - want).max() <= TOLERANCE
    assert len(server.requests) == 1  # converted once, adapted per model
    # A PyTorch file by path: the same rule (`convert.plan` applies it).
    from_path = keras_senet.create_model(
        "seresnext26d_32x4d", weights=str(small["pth"]), classifier_activation=None,
        input_shape=(None, None, channels),
    )
    got = np.asarray(from_path(np.transpose(x, (0, 2, 3, 1)), training=False))
    assert np.abs(got - want).max() <= TOLERANCE
