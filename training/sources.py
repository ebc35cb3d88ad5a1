"""Where the images come from: TFDS, TFRecord shards, image folders, the demo.

Each ``*_source`` function returns a `Source`: a `tf.data.Dataset` of
``(payload, label, name)`` triples (``payload`` is the encoded image, or its
path when ``payload_is_path``; ``label`` is int32 and 0-based; ``name`` names
the file in error messages), already sharded for this input pipeline and, for
training, shuffled. `build_dataset` (in `training.data`) does the rest.

Sharding with a `tf.distribute.InputContext` gives input pipeline ``i`` of
``n`` the files (or, with fewer files than pipelines, the records) whose
index is ``i`` modulo ``n``: disjoint parts that together make the whole.
"""

import dataclasses
import functools
import glob
import logging
import os
import re

import numpy as np
import tensorflow as tf

from training import demo_data

AUTOTUNE = tf.data.AUTOTUNE
IMAGENET_CLASSES = 1000
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")
FOLDER_SPLIT_DIRS = {"train": ("train",), "validation": ("val", "validation")}
TFRECORD_PREFIXES = {"train": "train", "validation": "validation"}
# The standard ImageNet-1k TFRecord build: 1024 train and 128 validation
# shards holding 1,281,167 and 50,000 images.
_IMAGENET_SHARDS = {"train": (1024, 1_281_167), "validation": (128, 50_000)}
_LABEL_SAMPLE = 8192
_WNID = re.compile(r"^n\d{8}$")
logger = logging.getLogger(__name__)
_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[\w.-]+)?(:[\d.*]+)?$")


@dataclasses.dataclass(frozen=True)
class Source:
    dataset: tf.data.Dataset
    num_classes: int
    payload_is_path: bool = False


def resolve(data):
    """Tells which kind of source ``data`` names: ``(kind, location)``.

    Kinds: ``"demo"``, ``"tfds"``, ``"tfrecord"``, ``"folder"``. Explicit
    prefixes ``tfds:``, ``tfrecord:`` and ``folder:`` override the guess.
    """
    if not isinstance(data, (str, os.PathLike)) or not str(data):
        raise ValueError(
            "`data` must be 'demo', a TFDS name, a TFRecord directory or an "
            f"image-folder root. Received: data={data!r}"
        )
    data = os.fspath(data)
    if isinstance(data, bytes):
        data = os.fsdecode(data)
    try:
        data.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "`data` must be a UTF-8 path: TensorFlow cannot open the files "
            f"under another. Received: data={_printable(data)!r}"
        ) from None
    for kind in ("tfds", "tfrecord", "folder"):
        if data.startswith(kind + ":"):
            return kind, data[len(kind) + 1 :]
    if data == "demo":
        return "demo", data
    if os.path.isdir(data):
        if _tfrecord_files(data, "train") or _tfrecord_files(data, "validation"):
            return "tfrecord", data
        if any(
            os.path.isdir(os.path.join(data, d))
            for dirs in FOLDER_SPLIT_DIRS.values()
            for d in dirs
        ):
            return "folder", data
        raise ValueError(
            f"`data` directory {data!r} holds neither TFRecord shards "
            "('train-00000-of-01024', 'validation-00000-of-00128', ...) nor "
            "split folders ('train/', 'val/' or 'validation/')."
        )
    if os.sep in data or os.path.exists(data) or not _TFDS_NAME.match(data):
        raise ValueError(
            f"`data` {data!r} is not 'demo', an existing directory or a TFDS "
            "dataset name."
        )
    return "tfds", data


def _shard(arrays, input_context):
    if input_context is None or input_context.num_input_pipelines == 1:
        return arrays
    i, n = input_context.input_pipeline_id, input_context.num_input_pipelines
    return tuple(a[i::n] for a in arrays)


def _slices_source(payloads, labels, names, *, training, input_context, seed, num_classes, payload_is_path):
    payloads, labels, names = _shard((payloads, labels, names), input_context)
    if len(payloads) == 0:
        raise ValueError(
            "This input pipeline got no files: "
            f"{input_context.num_input_pipelines} pipelines share only "
            "fewer files than that."
        )
    ds = tf.data.Dataset.from_tensor_slices(
        (list(payloads), np.asarray(labels, np.int32), list(names))
    )
    if training:
        ds = ds.shuffle(len(payloads), seed=seed, reshuffle_each_iteration=True)
    return Source(ds, num_classes, payload_is_path)


# ----------------------------------------------------------------- demo


def demo_source(split, *, training, input_context, seed):
    encoded, labels, names = demo_data.load_split(split)
    return _slices_source(
        encoded, labels, names, training=training, input_context=input_context,
        seed=seed, num_classes=demo_data.NUM_CLASSES, payload_is_path=False,
    )


# ----------------------------------------------------------------- image folders


def _folder_split_dir(root, split):
    if split not in FOLDER_SPLIT_DIRS:
        raise ValueError(
            f"Image folders have the splits {tuple(FOLDER_SPLIT_DIRS)}. "
            f"Received: split={split!r}"
        )
    for name in FOLDER_SPLIT_DIRS[split]:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    raise ValueError(
        f"Image-folder root {root!r} has no {split} folder "
        f"(looked for {FOLDER_SPLIT_DIRS[split]})."
    )


# Never classes or images: hidden entries (".ipynb_checkpoints", ".DS_Store",
# "._photo.JPEG" AppleDouble files) and the resource folder macOS archives add.
_IGNORED_NAMES = ("__MACOSX",)
_reported_entries = set()


def _is_hidden(name):
    return name.startswith(".") or name in _IGNORED_NAMES


def _printable(path):
    """A path for messages, undecodable bytes shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _report_entry(path, why):
    """Logs (once per process) a directory entry that is left out."""
    key = (path, why)
    if key not in _reported_entries:
        _reported_entries.add(key)
        logger.warning("Skipped %s: %s.", _printable(path), why)


def _entries(directory, kind):
    """Sorted names of the ``kind`` ("dir" or "file") entries of a directory.

    Leaves out hidden entries silently, and (naming each in the log) entries
    that cannot be used: names that are not UTF-8, which TensorFlow's string
    tensors and the class names cannot hold, and links that are broken or
    loop, whose type cannot be read.
    """
    names = []
    with os.scandir(directory) as scan:
        for entry in scan:
            if _is_hidden(entry.name):
                continue
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                _report_entry(entry.path, "its name is not UTF-8 (rename it to use it)")
                continue
            try:
                wanted = entry.is_dir() if kind == "dir" else entry.is_file()
            except OSError as error:  # a link loop, a permission error, ...
                _report_entry(entry.path, f"it cannot be read ({error.strerror})")
                continue
            if not wanted and entry.is_symlink() and not os.path.exists(entry.path):
                _report_entry(entry.path, "it is a broken link")
                continue
            if wanted:
                names.append(entry.name)
    return sorted(names)


def _class_dirs(split_dir):
    return _entries(split_dir, "dir")


def _check_imagenet_classes(classes, where):
    """Refuses a tree that is ImageNet-1k's with some folders off.

    The 1000 WordNet ids plus other folders (a backup copy, "tmp", ...), or
    exactly 1000 folders that are not the 1000 ids, would number the labels
    differently from keras-senet's class names without any error later.
    A larger tree of WordNet ids only (ImageNet-21k) is a dataset of its own.
    """
    from keras_senet.imagenet import wnids

    ours = wnids()
    known = set(ours)
    present = [c for c in classes if c in known]
    extras = [c for c in classes if c not in known]
    strays = [c for c in extras if not _WNID.match(c)]
    if len(present) == len(ours) and strays:
        raise ValueError(
            f"Image-folder {where!r} holds the {len(ours)} ImageNet-1k class "
            f"folders and {len(strays)} other folder(s): {_some(strays)}. Each "
            "would become a class and shift the labels: move them out."
        )
    if len(classes) == len(ours) and len(present) != len(ours):
        missing = sorted(known - set(classes))
        raise ValueError(
            f"Image-folder {where!r} has {len(ours)} classes but they are not "
            "the ImageNet-1k WordNet ids that keras-senet's class names use "
            f"(missing: {_some(missing)}; not ImageNet-1k: {_some(extras)}). "
            "Labels would not match the models."
        )
    if len(ours) - 10 <= len(present) < len(ours) and not extras:
        missing = sorted(known - set(classes))
        logger.warning(
            "Image-folder %r has %d of the %d ImageNet-1k classes (missing: "
            "%s): its labels number these %d folders, not ImageNet-1k's.",
            where, len(present), len(ours), _some(missing), len(classes),
        )


def _some(names, limit=5):
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def folder_classes(root, split=None):
    """The class folder names (label order) of an image-folder root.

    The training folder defines the classes when it exists, so that both
    splits number them alike; a split's classes must be among them. Hidden
    folders (names starting with ".") and ``__MACOSX`` are never classes. A
    tree with the 1000 ImageNet-1k WordNet ids must hold exactly them.
    """
    train_dir = os.path.join(root, "train")
    reference = train_dir if os.path.isdir(train_dir) else _folder_split_dir(root, split or "validation")
    classes = _class_dirs(reference)
    if not classes:
        raise ValueError(f"Image-folder {reference!r} has no class folders.")
    if split is not None:
        extra = sorted(set(_class_dirs(_folder_split_dir(root, split))) - set(classes))
        if extra:
            raise ValueError(
                f"The {split} folder of {root!r} has classes that {reference!r} "
                f"lacks: {_some(extra)}"
            )
    if len(classes) >= IMAGENET_CLASSES - 10:
        _check_imagenet_classes(classes, reference)
    return tuple(classes)


def folder_files(root, split):
    """Sorted ``(paths, labels)`` of one split of an image-folder root.

    Files are the class folders' entries with an image extension; hidden
    files and entries that cannot be used (see `_entries`) are left out.
    """
    classes = folder_classes(root, split)
    split_dir = _folder_split_dir(root, split)
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(split_dir, name)
        if not os.path.isdir(class_dir):
            continue
        for file_name in _entries(class_dir, "file"):
            if file_name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(class_dir, file_name))
                labels.append(label)
    if not paths:
        raise ValueError(
            f"Image-folder {split_dir!r} holds no image files "
            f"(extensions {IMAGE_EXTENSIONS})."
        )
    return np.array(paths, dtype=object), np.array(labels, np.int32)


def folder_source(root, split, *, training, input_context, seed):
    paths, labels = folder_files(root, split)
    return _slices_source(
        paths, labels, paths, training=training, input_context=input_context,
        seed=seed, num_classes=len(folder_classes(root, split)), payload_is_path=True,
    )


# ----------------------------------------------------------------- TFRecord shards


def _tfrecord_files(directory, split):
    prefix = TFRECORD_PREFIXES.get(split)
    if prefix is None:
        return []
    pattern = os.path.join(glob.escape(directory), f"{prefix}-[0-9]*-of-[0-9]*")
    return sorted(glob.glob(pattern))


def tfrecord_files(directory, split):
    if split not in TFRECORD_PREFIXES:
        raise ValueError(
            f"TFRecord directories have the splits {tuple(TFRECORD_PREFIXES)}. "
            f"Received: split={split!r}"
        )
    files = _tfrecord_files(directory, split)
    if not files:
        raise ValueError(
            f"TFRecord directory {directory!r} has no {split} shards "
            f"(files named '{TFRECORD_PREFIXES[split]}-00000-of-NNNNN')."
        )
    return files


def tfrecord_size(directory, split):
    """The ImageNet-1k split size for the standard shard layout, else None."""
    files = _tfrecord_files(directory, split)
    shards, size = _IMAGENET_SHARDS[split]
    suffix = f"-of-{shards:05d}"
    if len(files) == shards and all(f.endswith(suffix) for f in files):
        return size
    return None


_LABEL_FEATURE = {"image/class/label": tf.io.FixedLenFeature([], tf.int64)}


@functools.lru_cache(maxsize=16)
def detect_label_offset(files, num_classes=IMAGENET_CLASSES, max_records=_LABEL_SAMPLE):
    """Tells 1-based labels (1..N, 0 = background) from 0-based ones.

    Reads up to ``max_records`` labels spread over the shards: a 0 means
    0-based (offset 0), a label N means 1-based (offset 1). Raises a
    ValueError when neither shows up (ambiguous) or both do.
    """
    ds = tf.data.Dataset.from_tensor_slices(list(files)).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 64), block_length=1,
    )
    ds = ds.take(max_records).batch(1024).map(
        lambda r: tf.io.parse_example(r, _LABEL_FEATURE)["image/class/label"]
    )
    labels = np.concatenate([b.numpy() for b in ds] or [np.zeros([0], np.int64)])
    where = os.path.dirname(files[0])
    if len(labels) and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(
            f"TFRecord labels in {where!r} must lie in 0..{num_classes}; found "
            f"{labels.min()}..{labels.max()}."
        )
    zero, top = bool(np.any(labels == 0)), bool(np.any(labels == num_classes))
    if zero and top:
        raise ValueError(
            f"TFRecord labels in {where!r} include both 0 and {num_classes}: "
            f"{num_classes + 1} classes for a {num_classes}-class dataset."
        )
    if zero or top:
        return 1 if top else 0
    raise ValueError(
        f"Cannot tell whether the TFRecord labels in {where!r} are 1..{num_classes} "
        f"or 0..{num_classes - 1}: the {len(labels)} labels read include neither 0 "
        f"nor {num_classes}. Pass label_offset=1 (1-based, the standard ImageNet "
        "build) or label_offset=0."
    )


def _check_label_offset(label_offset):
    if label_offset not in ("auto", 0, 1) or isinstance(label_offset, bool):
        raise ValueError(
            "`label_offset` must be 'auto', 0 or 1. "
            f"Received: label_offset={label_offset!r}"
        )


def tfrecord_source(directory, split, *, training, input_context, seed, label_offset, shuffle_buffer_size):
    _check_label_offset(label_offset)
    files = tfrecord_files(directory, split)
    if label_offset == "auto":
        label_offset = detect_label_offset(tuple(files))
    shard_records = False
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) >= input_context.num_input_pipelines:
            (files,) = _shard((np.array(files, dtype=object),), input_context)
            files = list(files)
        else:
            shard_records = True

    def read_file(path):
        records = tf.data.TFRecordDataset(path, buffer_size=8 << 20).enumerate()
        if shard_records:
            records = records.shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )
        return records.map(
            lambda i, record: (record, tf.strings.join([path, "#", tf.strings.as_string(i)]))
        )

    def parse(record, name):
        features = tf.io.parse_single_example(
            record,
            {
                "image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/class/label": tf.io.FixedLenFeature([], tf.int64),
            },
        )
        label = tf.cast(features["image/class/label"] - label_offset, tf.int32)
        return features["image/encoded"], label, name

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        read_file, cycle_length=min(len(files), 16), block_length=1,
        num_parallel_calls=AUTOTUNE, deterministic=not training,
    )
    if training:
        ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    return Source(ds.map(parse, num_parallel_calls=AUTOTUNE), IMAGENET_CLASSES)


# ----------------------------------------------------------------- TFDS


def _tfds_builder(name, data_dir):
    """The TFDS builder of ``name``, refusing a dataset that is not there.

    Raises a ValueError for a name TFDS does not know and for a dataset that
    is not prepared: then it names the directory TFDS reads and, for
    datasets such as ImageNet whose archives are placed by hand, where they
    go and the command that prepares them. (Nothing is downloaded here.)
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(
            f"`data` {name!r} is not 'demo', an existing directory or a TFDS "
            f"dataset: {first}"
        ) from None
    if builder.is_prepared() or _tfds_can_read(builder):
        return builder
    root = os.fspath(builder.data_dir_root)
    message = (
        f"The TFDS dataset {name!r} is not prepared: TFDS found no data in "
        f"{os.fspath(builder.data_dir)!r}."
    )
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions:
        manual_dir = os.path.join(root, "downloads", "manual")
        message += (
            f" Its archives are placed by hand in {manual_dir!r} "
            f"({' '.join(instructions.split())})"
        )
    if not data_dir:
        message += " Pass data_dir (--data-dir) if it is prepared elsewhere."
    raise ValueError(
        f"{message} To prepare it (once): tfds build {builder.name} --data_dir {root}"
    )


def _tfds_can_read(builder):
    """Whether TFDS serves the builder's data although it is not prepared
    on disk (``tfds.testing.mock_data`` does so)."""
    try:
        builder.as_dataset(split=_first_split(builder))
    except Exception:  # noqa: BLE001 - TFDS raises AssertionError and others
        return False
    return True


def _first_split(builder):
    splits = list(builder.info.splits) if hasattr(builder.info.splits, "keys") else []
    return splits[0] if splits else "train"


def tfds_source(name, split, *, training, input_context, seed, data_dir, shuffle_buffer_size):
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    read_config = tfds.ReadConfig(
        input_context=input_context, shuffle_seed=seed,
        try_autocache=False, skip_prefetch=True,
    )
    ds = builder.as_dataset(
        split=split, shuffle_files=training,
        decoders={"image": tfds.decode.SkipDecoding()}, read_config=read_config,
    )
    num_classes = builder.info.features["label"].num_classes
    fallback_prefix = f"{name}/{split}#"

    def triple(index, example):
        # Names must tell files apart in the skipped-file log and errors.
        file_name = example.get(
            "file_name", tf.strings.join([fallback_prefix, tf.strings.as_string(index)])
        )
        return example["image"], tf.cast(example["label"], tf.int32), file_name

    ds = ds.enumerate()
    if training:
        ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    return Source(ds.map(triple, num_parallel_calls=AUTOTUNE), num_classes)


def tfds_info(name, data_dir):
    """``(num_classes, num_train, num_eval, class_names)`` from TFDS metadata.

    Raises a ValueError when the dataset is unknown or not prepared (see
    `_tfds_builder`).
    """
    info = _tfds_builder(name, data_dir).info
    label = info.features["label"]

    def size(split):
        split_info = info.splits.get(split) if hasattr(info.splits, "get") else None
        return split_info.num_examples if split_info is not None else None

    names = tuple(label.names) if getattr(label, "names", None) else None
    return label.num_classes, size("train"), size("validation"), names
