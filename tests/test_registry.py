"""The weights registry against timm's own pretrained configs.

Every record is compared field by field with ``timm.models.get_pretrained_cfg``
(URL, hub id, sizes, crops, interpolation, mean/std, classes, licence), and
the set and order of tags with timm's, so that a typo cannot hide. Data only:
nothing is built or downloaded here.
"""

import re

import pytest

timm = pytest.importorskip("timm")

import keras_senet  # noqa: E402
from keras_senet import zoo  # noqa: E402
from keras_senet import models  # noqa: E402

RECORDS = list(zoo.REGISTRY.values())
ARCHITECTURES = sorted({r.model for r in RECORDS})
# timm's tags for models trained on ImageNet-1k or fine-tuned to it, and the
# ImageNet-12k backbones (the list); 'untrained' entries have no file.
EXPECTED_TAG = re.compile(r"^(in1k|(ra2|a1|a2|a3|bt|racm|gluon|ah)_in1k|sw_in12k(_ft_in1k(_288|_384)?)?)$")


def _timm_name(record):
    return record.timm_name or record.name


def _timm_cfg(record):
    cfg = timm.models.get_pretrained_cfg(_timm_name(record))
    assert cfg is not None, f"timm has no pretrained config {_timm_name(record)}"
    return cfg.to_dict()


def _timm_tags(architecture):
    """timm's pretrained tags of ``architecture``, in timm's order."""
    from timm.models import _registry

    return [
        name.split(".", 1)[1]
        for name, cfg in _registry.get_arch_pretrained_cfgs(architecture).items()
        if not name.endswith(".untrained") and (cfg.url or cfg.hf_hub_id or cfg.file)
    ]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.name)
def test_record_matches_timms_pretrained_config(record):
    cfg = _timm_cfg(record)
    assert (3, record.input_size, record.input_size) == tuple(cfg["input_size"])
    test_size = cfg.get("test_input_size")
    assert record.test_input_size == (test_size[1] if test_size else None)
    assert record.crop_pct == cfg["crop_pct"]
    assert record.test_crop_pct == cfg.get("test_crop_pct")
    assert record.interpolation == cfg["interpolation"]
    assert tuple(record.mean) == tuple(cfg["mean"])
    assert tuple(record.std) == tuple(cfg["std"])
    assert record.num_classes == cfg["num_classes"]
    assert record.license == cfg["license"]

    github = [s for s in record.sources if s.host == "github"]
    hub = [s for s in record.sources if s.host == "hub"]
    if cfg.get("url"):
        # The GitHub release file first, at exactly timm's URL.
        assert record.sources[0] is github[0]
        assert github[0].urls[0] == cfg["url"]
    else:
        assert github == []
    if cfg.get("hf_hub_id"):
        repo = cfg["hf_hub_id"].rstrip("/")
        if repo == "timm":  # timm's shorthand 'timm/' means timm/<name.tag>
            repo = f"timm/{_timm_name(record)}"
        assert [s.urls for s in hub] == [(f"{zoo.HUB}/{repo}/resolve/main/model.safetensors",)]
        assert record.sources[-1] is hub[0]
    else:
        assert hub == []


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.name)
def test_record_is_consistent(record):
    assert record.model in models.MODELS, record.name
    assert zoo.get_weights_info(record.name) is record
    assert EXPECTED_TAG.match(record.tag), record.tag
    assert record.num_classes in (1000, zoo.IMAGENET_12K_CLASSES)
    assert (record.num_classes == zoo.IMAGENET_12K_CLASSES) == record.tag.endswith("in12k")
    for source in record.sources:
        assert len(source.urls) == len(set(source.urls)) >= 1
        assert all(u.startswith(("https://", "http://")) for u in source.urls)
        # The URLs of one source serve one file: the same name everywhere.
        assert {u.rsplit("/", 1)[1] for u in source.urls} == (
            {zoo.HUB_FILE} if source.host == "hub" else {source.filename}
        )
        if source.host == "github":
            digits = re.search(r"-([0-9a-f]+)\.pth$", source.filename)[1]
            assert len(source.sha256_prefix) == 8
            assert digits.startswith(source.sha256_prefix)
        else:
            assert source.filename == f"{_timm_name(record)}.safetensors"
            assert source.sha256_prefix is None
        if source.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", source.sha256)
    # Accuracy at every reported size; the headline one at the eval size.
    sizes = [r.size for r in record.results]
    assert len(sizes) == len(set(sizes))
    for result in record.results:
        assert result.size in (record.input_size, record.eval_size)
        assert 70 < result.top1 < 90
        assert result.top5 is None or result.top1 < result.top5 < 99
    if record.num_classes == 1000:
        assert record.top1 is not None
    else:
        assert record.results == ()


def test_cache_and_mirror_file_names_are_unique():
    files = [s.filename for r in RECORDS for s in r.sources]
    assert len(files) == len(set(files))
    converted = [r.converted_filename for r in RECORDS]
    assert len(converted) == len(set(converted))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tags_and_default_follow_timms_order(architecture):
    records = [r for r in RECORDS if r.model == architecture]
    timm_models = {_timm_name(r).split(".", 1)[0] for r in records}
    assert len(timm_models) == 1
    expected = _timm_tags(timm_models.pop())
    assert [r.tag for r in records] == expected
    assert zoo.default_tag(architecture) == expected[0]
    assert zoo.REGISTRY[architecture] is records[0]
    assert zoo.get_weights_info(architecture) is records[0]


def test_every_timm_tag_of_the_modern_family_is_registered():
    """The eleven architectures of timm's SE-ResNet family: every tag."""
    family = [
        "seresnet50", "seresnet152d", "seresnext26d_32x4d", "seresnext26t_32x4d",
        "seresnext50_32x4d", "seresnext101_32x4d", "seresnext101_64x4d",
        "seresnext101_32x8d", "seresnext101d_32x8d", "seresnextaa101d_32x8d",
        "seresnextaa201d_32x8d",
    ]
    want = {f"{a}.{t}" for a in family for t in _timm_tags(a)}
    have = {r.name for r in RECORDS if r.model in family}
    assert have == want
    assert len(have) == 19


def test_audited_legacy_records():
    """The nine 2017-2019 records keep their names and files; SE-ResNeXt-26's
    nine-digit name is compared on eight digits and flagged."""
    legacy = [r for r in RECORDS if r.tag == "in1k"]
    assert [r.model for r in legacy] == [
        "se_resnet18", "se_resnet34", "se_resnet50", "se_resnet101", "se_resnet152",
        "se_resnext26_32x4d", "se_resnext50_32x4d", "se_resnext101_32x4d", "senet154",
    ]
    record = zoo.REGISTRY["se_resnext26_32x4d"]
    assert record.filename == "seresnext26_32x4d-65ebdb501.pth"
    assert record.sha256_prefix == "65ebdb50"
    assert "unverified" in record.note.lower()
    assert (record.top1, record.top5) == (77.108, 93.314)  # timm's results CSV
    # The converted cache file names of the releases are unchanged.
    assert zoo.REGISTRY["se_resnet50"].converted_filename == "se_resnet50-ce0d4300.weights.h5"
    # Cadene's original host serves the same file as a second URL.
    assert zoo.REGISTRY["se_resnet50"].sources[0].urls[1].startswith(zoo.CADENE_URL)


def test_lookups_and_errors():
    assert keras_senet.get_weights_info("seresnet50") is zoo.REGISTRY["seresnet50.a1_in1k"]
    assert zoo.find("seresnet50", "ra2_in1k").tag == "ra2_in1k"
    assert zoo.find("seresnet50", "seresnet50.a3_in1k").tag == "a3_in1k"
    assert zoo.find("seresnet50.a2_in1k").tag == "a2_in1k"
    assert zoo.find("seresnet50", "se_resnet50.in1k") is None  # another model's
    assert zoo.find("se_resnet99") is None
    with pytest.raises(ValueError, match="Pass the tag once"):
        zoo.find("seresnet50.a1_in1k", "a2_in1k")
    with pytest.raises(ValueError, match="name='seresnet50.zz_in1k'"):
        zoo.get_weights_info("seresnet50.zz_in1k")
    assert keras_senet.list_models(pretrained=True) == sorted(zoo.REGISTRY)
    assert keras_senet.list_models("seresnext26*", pretrained=True) == [
        "seresnext26d_32x4d.bt_in1k",
        "seresnext26t_32x4d.bt_in1k",
    ]


def test_input_config_is_the_tags_eval_transform():
    config = models.input_config("seresnextaa101d_32x8d.sw_in12k_ft_in1k_288")
    assert (config["input_size"], config["crop_pct"]) == (320, 1.0)
    assert (config["train_input_size"], config["train_crop_pct"]) == (288, 0.95)
    assert config["interpolation"] == "bicubic" and config["channel_order"] == "rgb"
    # A bare name is its default tag; a model without weights the defaults.
    assert models.input_config("seresnet50") == models.input_config("seresnet50.a1_in1k")
    assert models.input_config("se_resnet50")["input_size"] == 224
    assert models.input_config("se_resnet50")["interpolation"] == "bilinear"
    gluon = models.input_config("seresnext50_32x4d.gluon_in1k")
    assert (gluon["input_size"], gluon["crop_pct"]) == (224, 0.875)
    with pytest.raises(ValueError, match="Unknown tag 'b1_in1k'"):
        models.input_config("seresnet50.b1_in1k")
