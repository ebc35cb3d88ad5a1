"""The published weights: one record per checkpoint, as data.

`REGISTRY` maps timm's ``model.tag`` names to `PretrainedWeights` records
(``"seresnextaa101d_32x8d.sw_in12k_ft_in1k_288"``; the 2017 releases keep
their model names and carry timm's tag ``in1k``: ``"se_resnet50.in1k"``).
A record holds everything known about one weight file and nothing else lives
elsewhere: where to get it (`Source`: the URLs of one file, tried in order,
with its SHA-256 prefix or full digest where known), the input it expects
(train and test size, crop fractions, interpolation, mean/std), its number
of classes, the accuracy reported for it, its licence and where it comes
from. The records mirror timm's own pretrained configs
(``timm/models/resnet.py``, ``senet.py``), which ``tests/test_registry.py``
checks field by field; accuracy is timm's ``results/results-imagenet.csv``.

A bare model name stands for its default tag, the first of the model's tags
in timm's order (``seresnet50`` -> ``seresnet50.a1_in1k``), as in timm.

This module is data and lookups only: it imports no model code. Loading
(``weights="imagenet"``, a tag or a file) is `keras_senet.pretrained`; the
builders ask this registry for a record and hand it to the loader.

Command line (to list the checkpoints or pre-fill a cache)::

    python -m keras_senet.zoo list [--markdown]
    python -m keras_senet.zoo download se_resnet50 seresnet50.a1_in1k  # or: all
"""

import dataclasses
import fnmatch
import re

from keras_senet.imagenet import IMAGENET_MEAN
from keras_senet.imagenet import IMAGENET_STD

# Where timm publishes its files.
GITHUB = "https://github.com/rwightman/pytorch-image-models/releases/download"
GITHUB_HF = "https://github.com/huggingface/pytorch-image-models/releases/download"
GLUON = "https://github.com/rwightman/pytorch-pretrained-gluonresnet/releases/download"
CADENE_URL = "http://data.lip6.fr/cadene/pretrainedmodels"
HUB = "https://huggingface.co"
HUB_FILE = "model.safetensors"

IMAGENET_12K_CLASSES = 11821
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.[a-z]+$")

_CSV = "timm results-imagenet.csv"
_CARD = "timm model card (top-1 only)"
_CADENE = (
    "the authors' Caffe release (hujie-frank/SENet, Apache-2.0), converted "
    "to PyTorch by R. Cadene (pretrained-models.pytorch), hosted by timm"
)
_TIMM = "trained by R. Wightman with timm"
_GLUON = "GluonCV's model zoo (Apache-2.0), ported to timm by R. Wightman"


@dataclasses.dataclass(frozen=True)
class Source:
    """One file: the URLs that serve it (identical bytes, tried in order).

    ``filename`` is its name in the cache and on a mirror
    (``$KERAS_SENET_WEIGHTS_URL/<filename>``). ``sha256_prefix`` is the hash
    prefix in a GitHub release file name, ``sha256`` a full digest where one
    is known. Hub files have neither: the loader verifies the SHA-256 that
    the hub states for the file, checks the header against the model and
    records the digest at the first download.
    """

    urls: tuple
    filename: str
    sha256_prefix: str | None = None
    sha256: str | None = None

    @property
    def format(self):
        """``"safetensors"`` or ``"pytorch"`` (a pickled state dict)."""
        return "safetensors" if self.filename.endswith(".safetensors") else "pytorch"

    @property
    def host(self):
        """``"hub"`` for the Hugging Face hub, ``"github"`` otherwise."""
        return "hub" if self.urls[0].startswith(HUB + "/") else "github"


@dataclasses.dataclass(frozen=True)
class Result:
    """A reported ImageNet-1k validation accuracy (single centre crop)."""

    size: int
    crop_pct: float
    top1: float
    top5: float | None
    reported_by: str = _CSV


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint and everything needed to use it."""

    model: str  # the architecture (`keras_senet.list_models()`)
    tag: str  # timm's tag
    sources: tuple  # `Source`s, in the order to try
    origin: str  # who trained or converted it
    input_size: int = 224  # training size
    test_input_size: int | None = None  # evaluation size, if not the training one
    crop_pct: float = 0.875
    test_crop_pct: float | None = None
    interpolation: str = "bicubic"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    num_classes: int = 1000
    results: tuple = ()  # `Result`s, by size
    license: str = "apache-2.0"
    timm_name: str | None = None  # timm's model.tag, when not ours
    note: str = ""

    @property
    def name(self):
        return f"{self.model}.{self.tag}"

    @property
    def eval_size(self):
        """The input side the weights are evaluated at."""
        return self.test_input_size or self.input_size

    @property
    def eval_crop_pct(self):
        if self.test_input_size is None:
            return self.crop_pct
        return self.test_crop_pct or self.crop_pct

    @property
    def dataset(self):
        return "imagenet-12k" if self.num_classes == IMAGENET_12K_CLASSES else "imagenet-1k"

    def result_at(self, size):
        """The `Result` reported at input side ``size``, or None."""
        for result in self.results:
            if result.size == size:
                return result
        return None

    @property
    def top1(self):
        """Top-1 at the evaluation size, or None if none is reported."""
        result = self.result_at(self.eval_size)
        return None if result is None else result.top1

    @property
    def top5(self):
        result = self.result_at(self.eval_size)
        return None if result is None else result.top5

    # The first source, as older code and tests address a record.
    @property
    def url(self):
        return self.sources[0].urls[0]

    @property
    def filename(self):
        return self.sources[0].filename

    @property
    def sha256_prefix(self):
        return self.sources[0].sha256_prefix

    @property
    def converted_filename(self):
        """The converted ``.weights.h5`` in the cache (stable per record)."""
        prefix = self.sources[0].sha256_prefix
        if prefix:
            return f"{self.model}-{prefix}.weights.h5"
        return f"{self.name}.weights.h5"


def github(url, *mirrors, sha256_prefix=None, sha256=None):
    """A GitHub release file; its hash prefix is read from its name."""
    filename = url.rsplit("/", 1)[1]
    if sha256_prefix is None:
        match = _HASH_IN_NAME.search(filename)
        sha256_prefix = match[1] if match else None
    return Source((url, *mirrors), filename, sha256_prefix, sha256)


def hub(repo, sha256=None):
    """``model.safetensors`` of a Hugging Face hub repository ``timm/<name>``.

    Cached (and fetched from a mirror) as ``<name>.safetensors``.
    """
    name = repo.split("/", 1)[1]
    return Source((f"{HUB}/{repo}/resolve/main/{HUB_FILE}",), f"{name}.safetensors", None, sha256)


def _legacy(model, timm_model, url, top1, top5, *, cadene_mirror=False, **kw):
    source = github(url, f"{CADENE_URL}/{url.rsplit('/', 1)[1]}") if cadene_mirror else github(url)
    kw.setdefault("interpolation", "bilinear")
    kw.setdefault("origin", _CADENE)
    return PretrainedWeights(
        model=model,
        tag="in1k",
        sources=(source,),
        results=(Result(224, 0.875, top1, top5),),
        timm_name=f"{timm_model}.in1k",
        **kw,
    )


def _timm(model, tag, *, url=None, results=(), **kw):
    """A timm checkpoint: its GitHub release file where timm lists one, then
    the hub's ``model.safetensors``."""
    sources = ((github(url),) if url else ()) + (hub(f"timm/{model}.{tag}"),)
    kw.setdefault("origin", _GLUON if tag.startswith("gluon") else _TIMM)
    return PretrainedWeights(model=model, tag=tag, sources=sources, results=tuple(results), **kw)


# timm's eval conventions (its _rcfg and _ttcfg).
_RSB = dict(crop_pct=0.95, test_input_size=288, test_crop_pct=1.0)
_TT = dict(test_input_size=288, test_crop_pct=0.95)
_12K_NOTE = (
    "ImageNet-12k (11,821 classes; timm's class order): use include_top="
    "False for a backbone, or classes=11821 for its own head"
)
_HUB_NOTE = "only on the Hugging Face hub: no hash in a file name"

_RECORDS = (
    # The 2017-2019 releases (timm's legacy_* models).
    _legacy(
        "se_resnet18", "legacy_seresnet18", f"{GITHUB}/v0.1-weights/seresnet18-4bb0ce65.pth",
        71.766, 90.332, interpolation="bicubic", origin=_TIMM,
    ),
    _legacy(
        "se_resnet34", "legacy_seresnet34", f"{GITHUB}/v0.1-weights/seresnet34-a4004e63.pth",
        74.808, 92.126, origin=_TIMM,
    ),
    _legacy(
        "se_resnet50", "legacy_seresnet50", f"{GITHUB}/v0.1-cadene/se_resnet50-ce0d4300.pth",
        77.644, 93.758, cadene_mirror=True,
    ),
    _legacy(
        "se_resnet101", "legacy_seresnet101", f"{GITHUB}/v0.1-cadene/se_resnet101-7e38fcc6.pth",
        78.386, 94.262, cadene_mirror=True,
    ),
    _legacy(
        "se_resnet152", "legacy_seresnet152", f"{GITHUB}/v0.1-cadene/se_resnet152-d17c99b7.pth",
        78.660, 94.370, cadene_mirror=True,
    ),
    dataclasses.replace(
        _legacy(
            "se_resnext26_32x4d", "legacy_seresnext26_32x4d",
            f"{GITHUB}/v0.1-weights/seresnext26_32x4d-65ebdb501.pth",
            77.108, 93.314, interpolation="bicubic", origin=_TIMM,
        ),
        sources=(github(
            f"{GITHUB}/v0.1-weights/seresnext26_32x4d-65ebdb501.pth", sha256_prefix="65ebdb50"
        ),),
        note=(
            "the file name carries nine hex digits (65ebdb501); only the first "
            "eight, the convention of these names, are compared. Unverified "
            "until the first real download"
        ),
    ),
    _legacy(
        "se_resnext50_32x4d", "legacy_seresnext50_32x4d",
        f"{GITHUB}/v0.1-weights/legacy_se_resnext50_32x4d-f3651bad.pth", 79.076, 94.432,
    ),
    _legacy(
        "se_resnext101_32x4d", "legacy_seresnext101_32x4d",
        f"{GITHUB}/v0.1-weights/legacy_se_resnext101_32x4d-37725eac.pth", 80.230, 95.026,
    ),
    _legacy(
        "senet154", "legacy_senet154", f"{GITHUB}/v0.1-weights/legacy_senet154-e9eb9fe6.pth",
        81.308, 95.492,
    ),
    # timm's SE-ResNet / SE-ResNeXt family, in timm's tag order per model.
    _timm(
        "seresnet50", "a1_in1k", url=f"{GITHUB_HF}/v0.1-rsb-weights/seresnet50_a1_0-ffa00869.pth",
        results=[Result(288, 1.0, 81.102, 95.120)], **_RSB,
    ),
    _timm(
        "seresnet50", "a2_in1k", url=f"{GITHUB_HF}/v0.1-rsb-weights/seresnet50_a2_0-850de0d9.pth",
        results=[Result(288, 1.0, 81.106, 95.222)], **_RSB,
    ),
    _timm(
        "seresnet50", "a3_in1k", url=f"{GITHUB_HF}/v0.1-rsb-weights/seresnet50_a3_0-317ecd56.pth",
        input_size=160, crop_pct=0.95, test_input_size=224, test_crop_pct=0.95,
        results=[Result(224, 0.95, 77.028, 93.074)],
    ),
    _timm(
        "seresnet50", "ra2_in1k", url=f"{GITHUB}/v0.1-weights/seresnet50_ra_224-8efdb4bb.pth",
        results=[Result(224, 0.875, 80.26, None, _CARD), Result(288, 0.95, 81.284, 95.652)],
        **_TT,
    ),
    _timm(
        "seresnet152d", "ra2_in1k", url=f"{GITHUB}/v0.1-weights/seresnet152d_ra2-04464dd2.pth",
        input_size=256, crop_pct=0.95, test_input_size=320, test_crop_pct=1.0,
        results=[Result(256, 0.95, 83.70, None, _CARD), Result(320, 1.0, 84.360, 97.040)],
    ),
    _timm(
        "seresnext26d_32x4d", "bt_in1k", url=f"{GITHUB}/v0.1-weights/seresnext26d_32x4d-80fa48a3.pth",
        results=[Result(288, 0.95, 78.814, 94.240)], **_TT,
    ),
    _timm(
        "seresnext26t_32x4d", "bt_in1k", url=f"{GITHUB}/v0.1-weights/seresnext26tn_32x4d-569cb627.pth",
        results=[Result(288, 0.95, 78.744, 94.312)], **_TT,
    ),
    _timm(
        "seresnext50_32x4d", "racm_in1k", url=f"{GITHUB}/v0.1-weights/seresnext50_32x4d_racm-a304a460.pth",
        results=[Result(224, 0.875, 81.27, None, _CARD), Result(288, 0.95, 82.196, 96.148)],
        **_TT,
    ),
    _timm(
        "seresnext50_32x4d", "gluon_in1k", url=f"{GLUON}/v0.1/gluon_seresnext50_32x4d-90cf2d6e.pth",
        results=[Result(224, 0.875, 79.910, 94.824)],
    ),
    _timm(
        "seresnext101_32x4d", "gluon_in1k", url=f"{GLUON}/v0.1/gluon_seresnext101_32x4d-cf52900d.pth",
        results=[Result(224, 0.875, 80.892, 95.296)],
    ),
    _timm(
        "seresnext101_64x4d", "gluon_in1k", url=f"{GLUON}/v0.1/gluon_seresnext101_64x4d-f9926f93.pth",
        results=[Result(224, 0.875, 80.896, 95.296)],
    ),
    _timm(
        "seresnext101_32x8d", "ah_in1k", url=f"{GITHUB}/v0.1-tpu-weights/seresnext101_32x8d_ah-e6bc4c0a.pth",
        results=[Result(224, 0.95, 83.62, None, _CARD), Result(288, 1.0, 84.186, 96.874)], **_RSB,
    ),
    _timm(
        "seresnext101d_32x8d", "ah_in1k", url=f"{GITHUB}/v0.1-tpu-weights/seresnext101d_32x8d_ah-191d7b94.pth",
        results=[Result(224, 0.95, 83.70, None, _CARD), Result(288, 1.0, 84.358, 96.920)], **_RSB,
    ),
    _timm(
        "seresnextaa101d_32x8d", "sw_in12k_ft_in1k_288",
        input_size=288, crop_pct=0.95, test_input_size=320, test_crop_pct=1.0,
        results=[Result(288, 0.95, 86.53, None, _CARD), Result(320, 1.0, 86.724, 98.176)],
        note=_HUB_NOTE,
    ),
    _timm(
        "seresnextaa101d_32x8d", "sw_in12k_ft_in1k",
        test_input_size=288, test_crop_pct=1.0,
        results=[Result(224, 0.875, 85.96, None, _CARD), Result(288, 1.0, 86.484, 98.030)],
        note=_HUB_NOTE,
    ),
    _timm(
        "seresnextaa101d_32x8d", "sw_in12k", num_classes=IMAGENET_12K_CLASSES,
        crop_pct=0.95, test_input_size=288, test_crop_pct=1.0,
        note=f"{_12K_NOTE}; {_HUB_NOTE}",
    ),
    _timm(
        "seresnextaa101d_32x8d", "ah_in1k", url=f"{GITHUB}/v0.1-tpu-weights/seresnextaa101d_32x8d_ah-83c8ae12.pth",
        results=[Result(224, 0.95, 83.90, None, _CARD), Result(288, 1.0, 84.566, 97.076)], **_RSB,
    ),
    _timm(
        "seresnextaa201d_32x8d", "sw_in12k_ft_in1k_384", input_size=384, crop_pct=1.0,
        results=[Result(384, 1.0, 87.30, None, "timm README, 2023-07-27 (top-1 only)")],
        note=_HUB_NOTE,
    ),
    _timm(
        "seresnextaa201d_32x8d", "sw_in12k", num_classes=IMAGENET_12K_CLASSES,
        input_size=320, crop_pct=0.95, test_input_size=384, test_crop_pct=1.0,
        note=f"{_12K_NOTE}; {_HUB_NOTE}",
    ),
)


class Registry(dict):
    """``model.tag`` -> `PretrainedWeights`, in timm's order.

    A bare model name (``REGISTRY["se_resnet50"]``) is its default tag.
    """

    def __missing__(self, key):
        default = default_tag(key)
        if default is None:
            raise KeyError(key)
        return self[f"{key}.{default}"]


REGISTRY = Registry((r.name, r) for r in _RECORDS)


def tags(model):
    """The tags of ``model`` with published weights, default first."""
    return [r.tag for r in REGISTRY.values() if r.model == model]


def default_tag(model):
    """The tag ``weights="imagenet"`` loads for ``model`` (None if none)."""
    found = tags(model)
    return found[0] if found else None


def list_weights(pattern=None):
    """Every loadable ``model.tag``, sorted; ``pattern`` is a glob."""
    names = sorted(REGISTRY)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def find(name, weights="imagenet"):
    """The record for model or ``model.tag`` ``name`` and ``weights``.

    ``weights`` is ``"imagenet"`` (the tag in ``name``, else the default
    tag), a tag of the model, or a full ``model.tag`` of the same model.
    Returns None when ``name`` has no such weights; raises ValueError when
    ``weights`` names a tag that conflicts with the one in ``name``.
    """
    model, _, tag = name.partition(".")
    if weights != "imagenet":
        wanted_model, dot, wanted_tag = str(weights).rpartition(".")
        if dot and wanted_model != model:
            return None
        if tag and wanted_tag != tag:
            raise ValueError(
                f"`weights` names tag {wanted_tag!r} but the model name "
                f"{name!r} names tag {tag!r}. Pass the tag once. Received: "
                f"weights={weights!r}"
            )
        tag = wanted_tag
    return REGISTRY.get(f"{model}.{tag or default_tag(model)}")


def get_weights_info(name):
    """The `PretrainedWeights` record of ``model.tag`` (or a model's default)."""
    record = find(str(name)) if isinstance(name, str) else None
    if record is None:
        raise ValueError(
            "No published weights under this name. Names with weights "
            f"(`keras_senet.list_models(pretrained=True)`): {list_weights()}. "
            f"Received: name={name!r}"
        )
    return record


# --- Command line ----------------------------------------------------------


def _fmt(value):
    return "-" if value is None else f"{value:.2f}"


def _accuracy(record, size):
    result = record.result_at(size)
    if result is None:
        return "-", "-"
    return _fmt(result.top1), _fmt(result.top5)


def sources_text(record):
    """A record's sources in a line of markdown: ``GitHub `<file>`, hub``."""
    return ", ".join(
        "hub" if s.host == "hub" else f"GitHub `{s.filename}`" for s in record.sources
    )


def markdown_table(records=None):
    """A markdown table of every loadable checkpoint."""
    records = list(REGISTRY.values()) if records is None else list(records)
    rows = [
        "| name.tag | classes | train size (crop) | top-1 / top-5 | test size (crop) "
        "| top-1 / top-5 | interpolation | sources |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        train = "{} / {}".format(*_accuracy(r, r.input_size))
        if r.test_input_size:
            test_size = f"{r.test_input_size} ({r.test_crop_pct or r.crop_pct})"
            test = "{} / {}".format(*_accuracy(r, r.test_input_size))
        else:
            test_size, test = "-", "-"
        sources = sources_text(r)
        rows.append(
            f"| {r.name} | {r.num_classes} | {r.input_size} ({r.crop_pct}) | {train} "
            f"| {test_size} | {test} | {r.interpolation} | {sources} |"
        )
    return "\n".join(rows)


def _list_lines():
    lines = []
    for r in REGISTRY.values():
        top = "" if r.top1 is None else f"  top-1 {r.top1:.2f} @ {r.eval_size}"
        lines.append(f"{r.name}  ({r.num_classes} classes){top}")
        for s in r.sources:
            check = (
                f"sha256 {s.sha256}" if s.sha256
                else f"sha256 prefix {s.sha256_prefix}" if s.sha256_prefix
                else "sha256 stated by the hub"
            )
            lines.append(f"    {s.filename}: {' | '.join(s.urls)}  [{check}]")
    return "\n".join(lines)


def main(argv=None):
    """``python -m keras_senet.zoo``: list the checkpoints, or download them.

    User mistakes (an unknown name, offline without the file, a refused
    download) print one line and exit with status 2.
    """
    import argparse
    import os

    parser = argparse.ArgumentParser(
        prog="python -m keras_senet.zoo",
        description="List or pre-download the published SE weights.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="print every loadable checkpoint")
    ls.add_argument("--markdown", action="store_true", help="as a markdown table")
    dl = sub.add_parser(
        "download",
        help="download, verify and convert into the cache; prints each "
        "file's full SHA-256 in sha256sum format",
    )
    dl.add_argument("names", nargs="+", help="model or model.tag names, or 'all'")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(markdown_table() if args.markdown else _list_lines())
        return 0
    names = list_weights() if args.names == ["all"] else args.names
    for name in names:
        if find(name) is None:
            parser.error(
                f"no published weights named {name!r}; see `python -m "
                "keras_senet.zoo list`"
            )
    # The command line sits above the library: it builds models to convert.
    from keras_senet import download
    from keras_senet.models import download_weights

    try:
        for name in names:
            for paths in download_weights([name]).values():
                # The downloaded checkpoint (what a pin file pins), in
                # sha256sum format; the converted file's digest is in its
                # manifest.
                for path in paths:
                    if not path.endswith(".weights.h5"):
                        line = download.format_sha256_line(
                            download.sha256_file(path), os.path.basename(path)
                        )
                        print(line, flush=True)
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
