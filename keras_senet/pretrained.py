"""Loading weights into a built model: published checkpoints and files.

The builders (`keras_senet.models._common.build_model`) call `load` with a
registry record (`keras_senet.zoo`) or a path, the state-dict layout of the
architecture, and a `reference` factory that builds the same architecture
with another head or channel count. This module sits below the models: it
uses the registry (data), the downloads (`download`), the readers
(`state_dict`) and the mapping (`convert`), and no model code.

Published weights (a record):

- the converted ``.weights.h5`` in the cache is used when its manifest
  vouches for it (conversion version, source file, SHA-256);
- otherwise each of the record's sources is tried in order (a GitHub
  release ``.pth``, then the Hugging Face hub's ``model.safetensors``; the
  URLs of one source serve the same file and go to `download.fetch`
  together). Each file is verified before it is kept: the hash prefix in its
  name or a full digest (a pinned one, the record's, or the one recorded at
  the file's first download), the SHA-256 the hub states for it, and its
  header against the model (every name and shape, `convert.plan`) within a
  memory budget, before any tensor data is read. The first good one is
  converted, and the result cached with a manifest;
- a model with another head or channel count than the published one gets
  the backbone copied by layer name (the stem convolution adapted to the
  channel count as timm does; a head of another size left new).

A path: ``.weights.h5`` (this package's), or a state dict: ``.pth``,
``.pt``, ``.bin`` (PyTorch) or ``.safetensors``, converted on the fly.
"""

import json
import logging
import os

import keras
import numpy as np

from keras_senet import convert
from keras_senet import download
from keras_senet import state_dict as state_dict_reader

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "keras_senet"
# Bump when the converted layout changes: old cached conversions are redone.
CONVERSION_VERSION = 2
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
WEIGHTS_SUFFIXES = (".weights.h5",) + STATE_DICT_SUFFIXES
HEAD_LAYER = convert.HEAD_LAYER
_BUDGET_SLACK = 64 << 20  # bytes beyond twice the model's float32 size

sha256_file = download.sha256_file


def load(model, *, record=None, path=None, layout=None, reference):
    """Loads published weights (``record``) or a file (``path``) into ``model``.

    Args:
        model: the built model.
        record: a `keras_senet.zoo.PretrainedWeights`, or None.
        path: a weights file (see `WEIGHTS_SUFFIXES`), when no record.
        layout: the state-dict layout of the architecture (see
            `keras_senet.convert.LAYOUTS`), for PyTorch and safetensors files.
        reference: ``reference(include_top, classes, channels)`` builds the
            same architecture, without weights, at any input size.

    Returns:
        ``model``.
    """
    if record is not None:
        return _load_published(model, record, layout, reference)
    path = os.fspath(path)
    if path.endswith(".weights.h5"):
        _load_weights_h5(model, path, reference)
    elif path.endswith(STATE_DICT_SUFFIXES):
        state_dict = read_state_dict(path, model, layout)
        convert.load_state_dict_into(model, state_dict, layout=layout)
    else:
        raise ValueError(
            "`weights` must be None, 'imagenet', a tag of published weights, "
            f"or a weights file ({', '.join(WEIGHTS_SUFFIXES)}). "
            f"Received: weights={path!r}"
        )
    return model


# --- Reading and copying -----------------------------------------------------


def memory_budget(model):
    """Bytes a checkpoint for ``model`` may make us allocate: twice the
    model's float32 size, plus slack (a head of another size fits)."""
    elements = sum(int(np.prod(v.shape)) for v in model.weights)
    return 2 * 4 * elements + _BUDGET_SLACK


def read_state_dict(path, model, layout):
    """The state dict in ``path``, read only if its names and shapes fit
    ``model`` (`convert.plan`) and its size fits `memory_budget`."""
    state_dict = state_dict_reader.load_state_dict(
        path,
        max_bytes=memory_budget(model),
        check=lambda shapes: convert.plan(model, shapes, layout=layout),
    )
    check_dtypes(path, state_dict)
    return state_dict


def check_dtypes(path, state_dict):
    """Every weight is floating point (BatchNorm's step counter excepted)."""
    for name, value in state_dict.items():
        if name.endswith(convert.IGNORED_SUFFIXES):
            continue
        if not np.issubdtype(np.asarray(value).dtype, np.floating):
            raise state_dict_reader.CheckpointError(
                f"{path}: tensor {name!r} has dtype {np.asarray(value).dtype}; "
                "model weights are floating point. The file is not a "
                "checkpoint of this model."
            )


def _channels(model):
    """The model's input channel count."""
    shape = model.inputs[0].shape
    axis = -1 if keras.config.image_data_format() == "channels_last" else 1
    return int(shape[axis])


def _head_units(model):
    try:
        return int(model.get_layer(HEAD_LAYER).units)
    except ValueError:
        return None


def copy_weights(source, model):
    """Copies every weight-carrying layer of ``model`` from ``source`` (by
    layer name), adapting input convolutions to ``model``'s channel count
    (`convert.adapt_input_conv`). The classifier is skipped when its size
    differs. Returns the names of the skipped layers."""
    adapt = convert.input_convolutions(model)
    skipped = []
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            values = source.get_layer(layer.name).get_weights()
        except ValueError:  # not in the source: only a head may be missing
            if layer.name != HEAD_LAYER:
                raise
            skipped.append(layer.name)
            continue
        if layer.name in adapt:
            in_channels = int(layer.kernel.shape[2])
            values[0] = convert.adapt_input_conv(values[0], in_channels)
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            if layer.name != HEAD_LAYER:
                raise ValueError(
                    f"Layer {layer.name!r} of {model.name!r} does not match "
                    f"its source: {[v.shape for v in values]} vs "
                    f"{[tuple(w.shape) for w in layer.weights]}."
                )
            skipped.append(layer.name)
            continue
        layer.set_weights(values)
    return skipped


def _h5_head_and_channels(path):
    """``(classes or None, input channels or None)`` of a ``.weights.h5``
    written by ``save_weights`` of one of our models: the head is its only
    top-level Dense layer, the stem its first Conv2D."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            layers = f.get("layers")
            if layers is None:
                return None, None
            dense = layers.get("dense/vars/0")
            conv = layers.get("conv2d/vars/0")
            classes = int(dense.shape[-1]) if dense is not None else None
            channels = int(conv.shape[2]) if conv is not None and len(conv.shape) == 4 else None
            return classes, channels
    except OSError as e:
        raise ValueError(
            f"`weights` is not a readable .weights.h5 file ({e}). "
            f"Received: weights={path!r}"
        ) from None


def _load_weights_h5(model, path, reference, known=None):
    """Loads a ``.weights.h5`` into ``model``; one written for another head
    or channel count loads through a reference model of its own shape."""
    classes, channels = known or _h5_head_and_channels(path)
    model_channels = _channels(model)
    if classes == _head_units(model) and channels in (None, model_channels):
        model.load_weights(path)
        return model
    source = reference(
        include_top=classes is not None,
        classes=classes or 1000,
        channels=channels or 3,
    )
    source.load_weights(path)
    skipped = copy_weights(source, model)
    if _head_units(model) is not None and (skipped or classes is None):
        logger.warning(
            "%s: loaded the backbone from %s; the %d-class classifier is "
            "freshly initialised (the file's has %s).",
            model.name,
            os.path.basename(path),
            _head_units(model),
            f"{classes} classes" if classes else "no classifier",
        )
    return model


# --- Published weights ---------------------------------------------------------


def _read_json(path):
    """A JSON object (dict) from ``path``, or None: missing, unreadable,
    damaged, or not an object (``null``, a list) all mean no manifest."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path, value):
    with download.atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1)


def _manifest_path(path):
    return path + ".json"


def _cached_conversion(record, path):
    """The converted file at ``path`` if its manifest vouches for it."""
    if not os.path.exists(path):
        return None
    manifest = _read_json(_manifest_path(path))
    if manifest is None:
        return None
    if (
        manifest.get("conversion_version") != CONVERSION_VERSION
        or manifest.get("name") != record.name
        or manifest.get("source_file") not in {s.filename for s in record.sources}
    ):
        return None
    if sha256_file(path) != manifest.get("sha256"):
        logger.warning(
            "Converted weights %s do not match their recorded SHA-256; "
            "converting again.",
            path,
        )
        return None
    return path


def _recorded(directory, source):
    """The record of ``source``'s first download (its ``<file>.json``)."""
    return _read_json(_manifest_path(os.path.join(directory, source.filename)))


def _fetch_checkpoint(record, target, layout):
    """``(source, path, state_dict)`` of the first source that downloads and
    verifies; raises `download.WeightsDownloadError` listing every attempt.

    Each source is held to its hash prefix, to its full SHA-256 where the
    record knows it or else to the one recorded at its first download (a
    digest pinned in ``KERAS_SENET_SHA256_FILE`` and the one the hub states
    are checked by `download.fetch` too), and its names and shapes to the
    model before its data is read.
    """
    directory = download.cache_dir(CACHE_SUBDIR)
    attempts = []
    for source in record.sources:
        checked = {}

        def validate(path):
            checked["state_dict"] = read_state_dict(path, target, layout)

        recorded = _recorded(directory, source)
        expected = source.sha256 or (recorded or {}).get("sha256")
        try:
            fetched = download.fetch_with_digest(
                download.resolve_urls(source.urls, source.filename),
                source.filename,
                sha256_prefix=source.sha256_prefix,
                sha256=expected,
                validate=validate,
                subdir=CACHE_SUBDIR,
            )
        except download.WeightsDownloadError as e:
            attempts.append((source, e, recorded is not None and not source.sha256))
            continue
        if recorded is None:  # its first download (or a cache from before)
            _write_json(
                _manifest_path(fetched.path),
                {
                    "file": source.filename,
                    "sha256": fetched.sha256,
                    "url": fetched.url,
                    "server_sha256": fetched.server_sha256,
                    "recorded": "at the first download; later copies must match",
                },
            )
        state_dict = checked.get("state_dict")
        if state_dict is None:
            state_dict = read_state_dict(fetched.path, target, layout)
        return source, fetched.path, state_dict
    raise download.WeightsDownloadError(_all_failed(record, attempts, directory))


def _all_failed(record, attempts, directory):
    """One error for every source that failed, with what to do."""
    lines = []
    for index, (source, error, by_record) in enumerate(attempts, 1):
        line = f"{str(error).strip()}"
        if by_record:
            line += (
                f" (The SHA-256 expected is the one recorded at the file's "
                f"first download in {_manifest_path(os.path.join(directory, source.filename))}"
                "; the file has changed since. Delete that record to accept "
                "the new file.)"
            )
        lines.append(line if len(attempts) == 1 else f"  {index}. {source.filename}: {line}")
    fallback = (
        "Or pass weights=<path to a copy of "
        f"{' or '.join(s.filename for s in record.sources)}> to load it from "
        "a file."
    )
    if len(attempts) == 1:
        return f"{lines[0]} {fallback}"
    return (
        f"The weights {record.name} could not be loaded from any of their "
        f"{len(attempts)} sources, tried in order:\n" + "\n".join(lines) + f"\n{fallback}"
    )


def converted_weights(record, layout, build_target):
    """Path of the converted ``.weights.h5`` of ``record`` in the cache.

    Downloads and converts on first use (into ``build_target()``, a model
    with the published head and 3 input channels); several processes calling
    this at once (every rank of a distributed job) end with one good file.
    """
    directory = download.cache_dir(CACHE_SUBDIR)
    path = os.path.join(directory, record.converted_filename)
    if _cached_conversion(record, path):
        return path
    with download.exclusive_lock(path + ".lock", record.converted_filename):
        if _cached_conversion(record, path):  # another process finished it
            return path
        target = build_target()
        source, source_path, state_dict = _fetch_checkpoint(record, target, layout)
        convert.load_state_dict_into(target, state_dict, layout=layout)
        with download.atomic_write(path) as tmp:
            target.save_weights(tmp)
        _write_json(
            _manifest_path(path),
            {
                "name": record.name,
                "source_file": source.filename,
                "source_urls": list(source.urls),
                "source_sha256": sha256_file(source_path),
                "sha256": sha256_file(path),
                "conversion_version": CONVERSION_VERSION,
            },
        )
    return path


def cached_files(record):
    """The cached checkpoint of ``record`` (the one converted) and its
    converted ``.weights.h5``, for those that exist."""
    directory = download.cache_dir(CACHE_SUBDIR)
    path = os.path.join(directory, record.converted_filename)
    files = []
    manifest = _read_json(_manifest_path(path)) or {}
    source = manifest.get("source_file")
    if source and os.path.isfile(os.path.join(directory, source)):
        files.append(os.path.join(directory, source))
    if os.path.isfile(path):
        files.append(path)
    return files


def _load_published(model, record, layout, reference):
    full = _head_units(model) == record.num_classes and _channels(model) == 3
    converted_into_model = []

    def build_target():
        if full:  # the published model itself: convert straight into it
            converted_into_model.append(True)
            return model
        return reference(include_top=True, classes=record.num_classes, channels=3)

    path = converted_weights(record, layout, build_target)
    if not converted_into_model:
        _load_weights_h5(model, path, reference, known=(record.num_classes, 3))
    return model
