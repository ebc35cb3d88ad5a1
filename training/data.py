"""The ImageNet input pipeline on tf.data: `build_dataset` and `describe`.

`build_dataset` turns any of four sources into batches of
``(images, labels)``: float32 ``(B, S, S, 3)`` images normalised as
``(x / 255 - mean) / std`` and int32 ``(B,)`` labels in ``0..N-1``.

Sources (``data``):
- ``"demo"``: scikit-learn's 1797 digits as small grayscale JPEGs
  (`training.demo_data`), 10 classes, offline.
- a TFDS name (``"imagenet2012"``, or ``"tfds:<name>"``), read as raw encoded
  bytes so that the cropping decoder applies.
- a directory of TFRecord shards in the standard ImageNet layout
  (``train-00000-of-01024``, ``validation-00000-of-00128``; features
  ``image/encoded`` and ``image/class/label``, 1-based or 0-based labels).
- an image-folder root: ``<root>/train/<wnid>/*.JPEG`` and
  ``<root>/val/<wnid>/...`` (or ``validation/``); classes in lexicographic
  order.

Files that cannot be decoded (corrupt, truncated, not an image) are skipped
and counted (`skipped_files`, `CorruptFileLogger`), or with ``strict=True``
stop the pipeline with a `tf.errors.InvalidArgumentError` naming the file.
Errors in the arguments or in the dataset's layout are ValueErrors raised by
`build_dataset` itself.
"""

import collections
import dataclasses
import logging
import math
import threading

import keras
import tensorflow as tf

from training import demo_data
from training import sources
from training import transforms

AUTOTUNE = tf.data.AUTOTUNE
OUTPUT_DTYPES = ("float32", "uint8")
# Images decoded per nested, error-catching dataset (see `_decode_groups`).
_GROUP_SIZE = 32
SPLITS = ("train", "validation")
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds: class count, split sizes (None: unknown), names."""

    num_classes: int
    num_train: int | None
    num_eval: int | None
    class_names: tuple | None


def describe(data, data_dir=None):
    """Returns the `DatasetInfo` of ``data`` (see `build_dataset`)."""
    kind, location = sources.resolve(data)
    if kind == "demo":
        return DatasetInfo(
            num_classes=demo_data.NUM_CLASSES,
            num_train=demo_data.split_size("train"),
            num_eval=demo_data.split_size("validation"),
            class_names=demo_data.CLASS_NAMES,
        )
    if kind == "tfds":
        return DatasetInfo(*sources.tfds_info(location, data_dir))
    if kind == "tfrecord":
        from keras_senet.imagenet import wnids

        return DatasetInfo(
            num_classes=sources.IMAGENET_CLASSES,
            num_train=sources.tfrecord_size(location, "train"),
            num_eval=sources.tfrecord_size(location, "validation"),
            class_names=tuple(wnids()),
        )
    classes = sources.folder_classes(location)

    def size(split):
        try:
            return len(sources.folder_files(location, split)[0])
        except ValueError:
            return None

    return DatasetInfo(len(classes), size("train"), size("validation"), classes)


# ----------------------------------------------------------------- skipped files


class _SkipLog:
    """Counts (and remembers the last names of) the files skipped so far."""

    def __init__(self, keep=1000):
        self._lock = threading.Lock()
        self.count = 0
        self.names = collections.deque(maxlen=keep)

    def record_all(self, names):
        names = [n.decode("utf-8", "replace") for n in names.numpy()]
        with self._lock:
            self.count += len(names)
            self.names.extend(names)
        for name in names:
            logger.warning(
                "Skipped image file %s: it cannot be decoded (corrupt, truncated "
                "or not an image).",
                name,
            )
        return False

    def reset(self):
        with self._lock:
            self.count = 0
            self.names.clear()


_SKIPPED = _SkipLog()


def skipped_files():
    """How many undecodable files all pipelines of this process skipped."""
    return _SKIPPED.count


def skipped_file_names():
    """The names of the last (up to 1000) skipped files, oldest first."""
    return list(_SKIPPED.names)


def reset_skipped_files():
    """Sets the skipped-file count back to zero."""
    _SKIPPED.reset()


class CorruptFileLogger(keras.callbacks.Callback):
    """Logs, at each epoch's end, how many corrupt files were skipped.

    Adds ``skipped_files`` (the running total) to the epoch's logs, so that
    `keras.callbacks.CSVLogger` or TensorBoard placed after it record it.
    """

    def __init__(self):
        super().__init__()
        self._at_epoch_start = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._at_epoch_start = skipped_files()

    def on_epoch_end(self, epoch, logs=None):
        total = skipped_files()
        new = total - self._at_epoch_start
        if new:
            logger.warning(
                "Epoch %d: skipped %d corrupt image file(s) (%d in all; last: %s).",
                epoch + 1, new, total, skipped_file_names()[-1],
            )
        if logs is not None:
            logs["skipped_files"] = total


# ----------------------------------------------------------------- the pipeline


def _check_arguments(
    split, image_size, global_batch_size, mean, std, crop_pct, interpolation,
    area_range, aspect_ratio_range, private_threads, output_dtype,
):
    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(
            f"`output_dtype` must be one of {OUTPUT_DTYPES}. "
            f"Received: output_dtype={output_dtype!r}"
        )
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be 'train' or 'validation'. Received: split={split!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive integer. Received: image_size={image_size!r}")
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ValueError(
            "`global_batch_size` must be a positive integer. "
            f"Received: global_batch_size={global_batch_size!r}"
        )
    for arg, value in (("mean", mean), ("std", std)):
        if len(value) != 3:
            raise ValueError(f"`{arg}` must hold 3 values (RGB). Received: {arg}={value!r}")
    if min(std) <= 0:
        raise ValueError(f"`std` must be positive. Received: std={std!r}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"`crop_pct` must be in (0, 1]. Received: crop_pct={crop_pct!r}")
    transforms.check_interpolation(interpolation)
    low, high = area_range
    if not 0 < low <= high <= 1:
        raise ValueError(
            "`area_range` must be (low, high) with 0 < low <= high <= 1. "
            f"Received: area_range={area_range!r}"
        )
    low, high = aspect_ratio_range
    if not 0 < low <= high:
        raise ValueError(
            "`aspect_ratio_range` must be (low, high) with 0 < low <= high. "
            f"Received: aspect_ratio_range={aspect_ratio_range!r}"
        )
    if private_threads is not None and (not isinstance(private_threads, int) or private_threads < 1):
        raise ValueError(
            "`private_threads` must be a positive integer or None. "
            f"Received: private_threads={private_threads!r}"
        )


def _open_source(
    data, split, *, training, input_context, shuffle_seed, label_offset, data_dir,
    shuffle_buffer_size,
):
    kind, location = sources.resolve(data)
    common = dict(training=training, input_context=input_context, seed=shuffle_seed)
    if kind == "tfds":
        return sources.tfds_source(
            location, split, data_dir=data_dir,
            shuffle_buffer_size=shuffle_buffer_size, **common,
        )
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    if kind == "demo":
        return sources.demo_source(split, **common)
    if kind == "tfrecord":
        return sources.tfrecord_source(
            location, split, label_offset=label_offset,
            shuffle_buffer_size=shuffle_buffer_size, **common,
        )
    return sources.folder_source(location, split, **common)


def _check_labels(num_classes):
    """A batch map: fails, naming the files, on a label outside 0..N-1."""

    def check(images, labels, names, at_end, missing):
        bad = tf.logical_or(labels < 0, labels >= num_classes)
        guard = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [
                f"Label out of range [0, {num_classes}) in",
                tf.boolean_mask(names, bad), "labels:", tf.boolean_mask(labels, bad),
            ],
            name="check_label",
        )
        with tf.control_dependencies([guard]):
            return tf.identity(images), tf.identity(labels)

    return check


def _decode_groups(ds, image_fn, *, payload_is_path, group_size, deterministic):
    """Decodes the elements in groups; a file that fails is left out.

    tf.data catches errors only at a dataset's boundary. Each group of
    ``group_size`` elements therefore becomes a small dataset: a plain map
    decodes its images and `ignore_errors` drops the ones that fail. A scan
    notes which positions came through, and a closing element (``at_end``)
    carries the names of the files that did not. The nested dataset costs
    the same for a group as it would for one image, so per image it is
    nearly free, and no image is copied on the way.

    ``ds`` holds ``((payload, label, name), seed)``. Returns a dataset of
    ``(image, label, name, at_end, missing_names)``.
    """

    def decode_group(x, seeds):
        payloads, labels, names = x
        count = tf.shape(names)[0]

        def decode(payload, label, name, seed, position):
            data = tf.io.read_file(payload) if payload_is_path else payload
            return image_fn(data, seed), label, name, position

        decoded = (
            tf.data.Dataset.from_tensor_slices((payloads, labels, names, seeds, tf.range(count)))
            .map(decode)
            .ignore_errors()
        )
        spec = decoded.element_spec[0]
        closing = tf.data.Dataset.from_tensors((
            tf.zeros(spec.shape, spec.dtype), tf.constant(-1, tf.int32), tf.constant(""), count,
        ))

        def account(seen, element):
            image, label, name, position = element
            seen = tf.logical_or(seen, tf.equal(tf.range(count), position))
            at_end = tf.equal(position, count)
            missing = tf.boolean_mask(names, tf.logical_and(at_end, tf.logical_not(seen)))
            return seen, (image, label, name, at_end, missing)

        return decoded.concatenate(closing).scan(tf.zeros([count], tf.bool), account)

    return ds.batch(group_size).interleave(
        decode_group, block_length=1, num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def _handle_failures(ds, strict):
    """Stops on (strict) or skips and records the files a group lost."""

    def keep(image, label, name, at_end, missing):
        complete = tf.equal(tf.size(missing), 0)
        if strict:
            guard = tf.debugging.Assert(
                complete,
                ["Cannot decode image file (corrupt, truncated or not an image):", missing],
                summarize=_GROUP_SIZE, name="check_decoded",
            )
        else:
            guard = tf.cond(
                complete,
                lambda: tf.constant(True),
                lambda: tf.reshape(tf.py_function(_SKIPPED.record_all, [missing], tf.bool), []),
            )
        with tf.control_dependencies([guard]):
            return tf.logical_not(at_end)

    return ds.filter(keep)  # The closing elements go; the kept ones have no `missing`.


def build_dataset(
    data,
    split,
    *,
    image_size,
    global_batch_size,
    training=None,
    input_context=None,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    channel_order="rgb",
    crop_pct=0.875,
    interpolation="bilinear",
    area_range=(0.08, 1.0),
    aspect_ratio_range=(3 / 4, 4 / 3),
    random_flip=True,
    label_offset="auto",
    strict=False,
    deterministic=None,
    shuffle_seed=None,
    cache=False,
    private_threads=None,
    repeat=None,
    data_dir=None,
    shuffle_buffer_size=10_000,
    output_dtype="float32",
):
    """Builds the batched input pipeline of one split.

    Args:
        data: ``"demo"``, a TFDS name (``"imagenet2012"`` or
            ``"tfds:<name>"``), a directory of TFRecord shards or an
            image-folder root (prefixes ``tfrecord:`` / ``folder:`` force the
            kind).
        split: ``"train"`` or ``"validation"`` (TFDS also takes its split
            syntax, e.g. ``"train[:10%]"``).
        image_size: side of the square output images.
        global_batch_size: batch size over all replicas; with
            ``input_context`` each pipeline batches its per-replica share.
        training: train transform (random-resized crop, flip), shuffling,
            ``drop_remainder=True``; eval transform (resize, centre crop)
            otherwise. Defaults to ``split`` starting with ``"train"``.
        input_context: a `tf.distribute.InputContext` (from
            ``strategy.distribute_datasets_from_function``): shards files by
            input pipeline and sets the per-replica batch size.
        mean, std: normalisation statistics on the [0, 1] scale.
        crop_pct: eval centre-crop fraction; the shorter side is resized to
            ``round(image_size / crop_pct)`` first.
        interpolation: resize method (``"bilinear"``, ``"bicubic"``, ...).
        area_range, aspect_ratio_range, random_flip: train augmentation. The
            digits demo should pass ``random_flip=False``.
        label_offset: TFRecord labels: ``"auto"`` tells 1..1000 from
            0..999 by reading a sample; 1 or 0 sets it.
        strict: ``False`` skips and counts undecodable files; ``True`` stops
            with an error naming the file.
        deterministic: output order; defaults to ``not training``.
        shuffle_seed: seeds the shuffles and the augmentation (reproducible
            given the same order); None draws fresh randomness.
        cache: keep the decoded, cropped eval images (uint8) in memory after
            the first pass (about 150 KB per 224x224 image).
        private_threads: size of a private thread pool for this pipeline.
        repeat: repeat forever; defaults to ``training``.
        data_dir: TFDS ``data_dir``.
        shuffle_buffer_size: records in the shuffle buffer (TFRecord, TFDS).
        channel_order: ``"rgb"``, or ``"bgr"`` to reverse the channels after
            normalising (``mean`` / ``std`` stay in RGB order), as
            `keras_senet.models.input_config` gives for Caffe-style models.
        output_dtype: ``"float32"`` (normalised with ``mean`` and ``std``) or
            ``"uint8"`` (the 0..255 pixels, not normalised: the accelerator
            normalises, e.g. with `transforms.normalize`, and the host saves
            that work and three quarters of the bytes it sends).

    Returns:
        A `tf.data.Dataset` of ``(images, labels)``: ``output_dtype``
        ``(B, image_size, image_size, 3)`` and int32 ``(B,)``.
    """
    _check_arguments(
        split, image_size, global_batch_size, mean, std, crop_pct, interpolation,
        area_range, aspect_ratio_range, private_threads, output_dtype,
    )
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(
            "`channel_order` must be 'rgb' or 'bgr'. "
            f"Received: channel_order={channel_order!r}"
        )
    training = split.startswith("train") if training is None else bool(training)
    deterministic = (not training) if deterministic is None else bool(deterministic)
    repeat = training if repeat is None else bool(repeat)
    batch_size = (
        input_context.get_per_replica_batch_size(global_batch_size)
        if input_context is not None
        else global_batch_size
    )
    source = _open_source(
        data, split, training=training, input_context=input_context,
        shuffle_seed=shuffle_seed, label_offset=label_offset, data_dir=data_dir,
        shuffle_buffer_size=shuffle_buffer_size,
    )
    ds = source.dataset

    if output_dtype == "uint8":
        finish = transforms.to_uint8
    else:
        def finish(image):
            image = transforms.normalize(image, mean, std)
            return image[..., ::-1] if channel_order == "bgr" else image

    if training:
        def transform(data, seed):
            return transforms.train_image(
                data, seed, image_size=image_size, area_range=tuple(area_range),
                aspect_ratio_range=tuple(aspect_ratio_range),
                random_flip=random_flip, interpolation=interpolation,
            )

        if repeat:
            ds = ds.repeat()
        seeds = tf.data.Dataset.random(seed=shuffle_seed)
        ds = tf.data.Dataset.zip(ds, seeds)
    else:
        def transform(data, seed):
            return transforms.eval_image(
                data, image_size=image_size, crop_pct=crop_pct,
                interpolation=interpolation,
            )

        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat())

    # Finishing each image right after its transform keeps it in the CPU
    # cache; only a cache of eval images keeps them as uint8 and finishes later.
    finish_later = cache and not training

    def image_fn(data, seed):
        image = transform(data, seed)
        return image if finish_later else finish(image)

    ds = _decode_groups(
        ds, image_fn, payload_is_path=source.payload_is_path,
        group_size=_GROUP_SIZE, deterministic=deterministic,
    )
    ds = _handle_failures(ds, strict)
    if not training:
        if cache:
            ds = ds.cache().map(
                lambda image, *rest: (finish(image), *rest),
                num_parallel_calls=AUTOTUNE, deterministic=deterministic,
            )
        if repeat:
            ds = ds.repeat()
    ds = ds.batch(
        batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    ds = ds.map(_check_labels(source.num_classes))
    ds = ds.prefetch(AUTOTUNE)

    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.threading.max_intra_op_parallelism = 1
    if private_threads is not None:
        options.threading.private_threadpool_size = private_threads
    if input_context is not None:
        # Sharded here already; a strategy must not shard again.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
    return ds.with_options(options)


def steps_per_epoch(num_examples, global_batch_size):
    """Training steps in one epoch (remainder dropped); None if unknown."""
    if num_examples is None:
        return None
    return max(1, math.floor(num_examples / global_batch_size))
