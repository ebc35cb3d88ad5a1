"""The published ImageNet weights: where they are, how to verify and load them.

`REGISTRY` is data: one `PretrainedWeights` entry per model, holding the
published checkpoint's URL, file name and SHA-256 prefix, the preprocessing
it expects and the accuracy reported for it. `load_into` is what
``weights=...`` in every builder calls:

- ``"imagenet"``: the converted ``.weights.h5`` from the cache when present
  and intact (its full SHA-256 is recorded in a manifest beside it);
  otherwise the PyTorch checkpoint is downloaded (`keras_senet.download`),
  checked against the model tensor by tensor, converted
  (`keras_senet.convert`) and the result cached, so later loads need neither
  network nor conversion.
- a path: a ``.weights.h5`` of this package, or a ``.pth`` / ``.pt``
  checkpoint in the published layout, converted on the fly.

Command line (to pre-fill a cache for offline clusters)::

    python -m keras_senet.zoo list
    python -m keras_senet.zoo download se_resnet50 senet154   # or: all
"""

import dataclasses
import json
import logging
import os


from keras_senet import convert
from keras_senet import download
from keras_senet import torch_checkpoint
from keras_senet.imagenet import IMAGENET_MEAN
from keras_senet.imagenet import IMAGENET_STD

logger = logging.getLogger(__name__)

BASE_URL = "https://github.com/rwightman/pytorch-image-models/releases/download"
CADENE_URL = "http://data.lip6.fr/cadene/pretrainedmodels"
# Bump when the converted layout changes: old cached conversions are redone.
CONVERSION_VERSION = 1
CACHE_SUBDIR = "keras_senet"

_CADENE_SOURCE = (
    "authors' Caffe release (hujie-frank/SENet, Apache-2.0), converted to "
    "PyTorch by R. Cadene (pretrained-models.pytorch, BSD-3-Clause), hosted "
    "by timm"
)
_TIMM_SOURCE = "trained by R. Wightman with timm (Apache-2.0)"


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint and everything needed to use it."""

    model: str
    filename: str  # ends in the first hex digits of the file's SHA-256
    release: str  # timm release tag holding the file
    top1: float | None  # ImageNet-1k val, 224, single centre crop
    top5: float | None
    source: str
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    input_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    num_classes: int = 1000
    mirrors: tuple = ()

    @property
    def url(self):
        return f"{BASE_URL}/{self.release}/{self.filename}"

    @property
    def sha256_prefix(self):
        stem = self.filename.rsplit(".", 1)[0]
        return stem.rsplit("-", 1)[1]

    @property
    def converted_filename(self):
        return f"{self.model}-{self.sha256_prefix}.weights.h5"


def _cadene(model, filename, top1, top5, release="v0.1-cadene", mirror=True):
    return PretrainedWeights(
        model=model,
        filename=filename,
        release=release,
        top1=top1,
        top5=top5,
        source=_CADENE_SOURCE,
        mirrors=(f"{CADENE_URL}/{filename}",) if mirror else (),
    )


REGISTRY = {
    w.model: w
    for w in (
        PretrainedWeights(
            "se_resnet18", "seresnet18-4bb0ce65.pth", "v0.1-weights",
            71.74, 90.34, _TIMM_SOURCE, interpolation="bicubic",
        ),
        PretrainedWeights(
            "se_resnet34", "seresnet34-a4004e63.pth", "v0.1-weights",
            74.79, 92.13, _TIMM_SOURCE,
        ),
        _cadene("se_resnet50", "se_resnet50-ce0d4300.pth", 77.65, 93.73),
        _cadene("se_resnet101", "se_resnet101-7e38fcc6.pth", 78.37, 94.26),
        _cadene("se_resnet152", "se_resnet152-d17c99b7.pth", 78.66, 94.37),
        PretrainedWeights(
            "se_resnext26_32x4d", "seresnext26_32x4d-65ebdb501.pth",
            "v0.1-weights", None, None, _TIMM_SOURCE, interpolation="bicubic",
        ),
        _cadene(
            "se_resnext50_32x4d", "legacy_se_resnext50_32x4d-f3651bad.pth",
            79.08, 94.43, release="v0.1-weights", mirror=False,
        ),
        _cadene(
            "se_resnext101_32x4d", "legacy_se_resnext101_32x4d-37725eac.pth",
            80.27, 95.03, release="v0.1-weights", mirror=False,
        ),
        _cadene(
            "senet154", "legacy_senet154-e9eb9fe6.pth", 81.32, 95.50,
            release="v0.1-weights", mirror=False,
        ),
    )
}


def list_weights():
    """Names of the models with published ImageNet weights."""
    return sorted(REGISTRY)


def get_weights_info(name):
    """The `PretrainedWeights` entry of model ``name``."""
    if name not in REGISTRY:
        raise ValueError(
            f"No published ImageNet weights for {name!r}. Models with "
            f"weights: {list_weights()}. Received: name={name!r}"
        )
    return REGISTRY[name]


# --- Loading ---------------------------------------------------------------


def _is_full_model(model, info):
    """Whether ``model`` has the published 1000-class head."""
    try:
        head = model.get_layer(convert.HEAD_LAYER)
    except ValueError:
        return False
    return head.units == info.num_classes


def _build_full_model(model_id):
    from keras_senet.models import create_model

    return create_model(
        model_id, weights=None, input_shape=(None, None, 3), classes=1000
    )


def _copy_by_layer_name(source, target):
    """Copies every layer of ``target`` that ``source`` has, by name."""
    names = {layer.name for layer in source.layers}
    for layer in target.layers:
        if layer.weights and layer.name in names:
            src = source.get_layer(layer.name)
            if [tuple(w.shape) for w in src.weights] != [
                tuple(w.shape) for w in layer.weights
            ]:
                continue  # the classifier of another size
            layer.set_weights(src.get_weights())


def _manifest_path(h5_path):
    return h5_path + ".json"


def _cached_conversion(info, path):
    """The converted file at ``path`` if its manifest vouches for it."""
    if not os.path.exists(path):
        return None
    try:
        with open(_manifest_path(path), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if (
        manifest.get("conversion_version") != CONVERSION_VERSION
        or manifest.get("source_file") != info.filename
    ):
        return None
    if download.sha256_file(path) != manifest.get("sha256"):
        logger.warning(
            "Converted weights %s do not match their recorded SHA-256; "
            "converting again.",
            path,
        )
        return None
    return path


def _convert_published(info, full_model):
    """Downloads, checks and converts the checkpoint into ``full_model``.

    Returns the path of the cached ``.weights.h5``.
    """
    checked = {}

    def validate(path):
        # Read and check tensor by tensor before the file enters the cache:
        # a checkpoint of another model is never kept.
        state_dict = torch_checkpoint.load_state_dict(path)
        convert.plan(full_model, state_dict)
        checked["state_dict"] = state_dict

    url = download.resolve_url(info.url, info.filename)
    pth = download.fetch(
        url,
        info.filename,
        sha256_prefix=info.sha256_prefix,
        validate=validate,
        subdir=CACHE_SUBDIR,
    )
    state_dict = checked.get("state_dict")
    if state_dict is None:  # already cached and verified earlier
        state_dict = torch_checkpoint.load_state_dict(pth)
    convert.load_state_dict_into(full_model, state_dict)
    target = os.path.join(os.path.dirname(pth), info.converted_filename)
    with download.atomic_write(target) as tmp:
        full_model.save_weights(tmp)
    manifest = {
        "model": info.model,
        "source_file": info.filename,
        "source_url": url,
        "source_sha256": download.sha256_file(pth),
        "sha256": download.sha256_file(target),
        "conversion_version": CONVERSION_VERSION,
    }
    with download.atomic_write(_manifest_path(target)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
    return target


def imagenet_weights_path(model_id, full_model=None):
    """Path of the converted ImageNet ``.weights.h5`` for ``model_id``.

    Downloads and converts on first use; several processes calling this at
    once (every rank of a distributed job) end with one good file.
    """
    info = get_weights_info(model_id)
    directory = os.path.join(download.cache_dir(), CACHE_SUBDIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, info.converted_filename)
    if _cached_conversion(info, path):
        return path
    with download.exclusive_lock(path + ".lock", info.converted_filename):
        if _cached_conversion(info, path):  # another process finished it
            return path
        if full_model is None:
            full_model = _build_full_model(model_id)
        return _convert_published(info, full_model)


def download_weights(names=None):
    """Downloads and converts published weights into the cache.

    Args:
        names: model names (see `list_weights()`), or None for all.

    Returns:
        ``{name: path of the converted .weights.h5}``.
    """
    if isinstance(names, str):
        names = [names]
    names = list_weights() if names is None else list(names)
    for name in names:
        get_weights_info(name)  # fail early on a bad name
    return {name: imagenet_weights_path(name) for name in names}


def _load_checkpoint_file(model, path):
    path = os.fspath(path)
    if path.endswith(".weights.h5"):
        model.load_weights(path)
    elif path.endswith((".pth", ".pt", ".bin")):
        convert.load_state_dict_into(
            model, torch_checkpoint.load_state_dict(path)
        )
    else:
        raise ValueError(
            "`weights` must be None, 'imagenet', a '.weights.h5' file or a "
            f"PyTorch checkpoint ('.pth', '.pt'). Received: weights={path!r}"
        )


def load_into(model, weights, *, model_id, include_top, classes):
    """Loads ``weights`` ("imagenet" or a path) into ``model``, built as
    ``model_id`` with ``include_top`` / ``classes``."""
    if weights != "imagenet":
        _load_checkpoint_file(model, weights)
        return model
    info = REGISTRY.get(model_id)
    if info is None:
        raise ValueError(
            f"No published ImageNet weights exist for {model_id!r}. "
            "Train it with `python -m training.train --model "
            f"{model_id}` and load the result with weights=<path>. "
            f"Models with ImageNet weights: {list_weights()}"
        )
    full = _is_full_model(model, info)
    path = imagenet_weights_path(model_id, full_model=model if full else None)
    if full:
        model.load_weights(path)
        return model
    reference = _build_full_model(model_id)
    reference.load_weights(path)
    _copy_by_layer_name(reference, model)
    if include_top and classes != info.num_classes:
        logger.warning(
            "%s: loaded the ImageNet backbone; the %d-class classifier is "
            "freshly initialised (the published one has %d classes).",
            model.name,
            classes,
            info.num_classes,
        )
    return model


# --- Command line ----------------------------------------------------------


def _table():
    rows = [
        "| model | file | top-1 | top-5 | interpolation | source |",
        "|---|---|---|---|---|---|",
    ]
    for name in list_weights():
        w = REGISTRY[name]
        top1 = "-" if w.top1 is None else f"{w.top1:.2f}"
        top5 = "-" if w.top5 is None else f"{w.top5:.2f}"
        rows.append(
            f"| {name} | {w.filename} | {top1} | {top5} | "
            f"{w.interpolation} | {w.source} |"
        )
    return "\n".join(rows)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m keras_senet.zoo",
        description="List or pre-download the published SE weights.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the weights registry")
    dl = sub.add_parser(
        "download", help="download and convert into the cache"
    )
    dl.add_argument("names", nargs="+", help="model names, or 'all'")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(_table())
        return 0
    names = None if args.names == ["all"] else args.names
    for name, path in download_weights(names).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
