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
  order. Hidden entries (".*", ``__MACOSX``) are never classes or images;
  entries that cannot be used (names that are not UTF-8, link loops) are
  left out and named in the log.

Files that cannot be decoded (corrupt, truncated, not an image) are skipped
and counted (`skipped_files`, `CorruptFileLogger`: once per pass that
training used), or with ``strict=True`` stop the pipeline with a
`tf.errors.InvalidArgumentError` naming the file. JPEGs with data after
their image (padding, a phone's appended video) are complete images and
used. Errors in the arguments or in the dataset's layout (an unknown or
unprepared TFDS dataset included) are ValueErrors raised by `build_dataset`
and `describe` themselves.
"""

import collections
import dataclasses
import logging
import math
import os
import threading
import weakref

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
#
# A file that cannot be decoded is skipped each time a pipeline reaches it:
# once per pass over the data. The decoders run ahead of training (prefetch,
# parallel decoding, the next pass begun before this one is consumed), so
# what they met is not what training used: a one-epoch run on a small
# folder decodes several passes ahead. While a `CorruptFileLogger` runs in
# `fit`, a training pipeline's skips are therefore held back with their
# position in the stream (the step whose batch holds the image that
# follows) and counted only when training reaches that step; skips the run
# never reached are dropped. Evaluation pipelines make one pass that is
# consumed whole, so theirs count at once.


@dataclasses.dataclass(frozen=True, eq=False)  # each pipeline its own
class _Stream:
    """What the skip log needs to know of one pipeline."""

    images_per_step: int  # images one training step takes from it
    held_back: bool  # training and repeating: skips wait for the steps


class _SkipLog:
    """Counts (and remembers the last names of) the files skipped so far,
    and passes each skip to the running `CorruptFileLogger`s."""

    def __init__(self, keep=1000):
        self._lock = threading.Lock()
        self.count = 0
        self.names = collections.deque(maxlen=keep)
        self._loggers = []
        self._reported_by_callback = weakref.WeakSet()

    def record(self, stream, names, position):
        names = [n.decode("utf-8", "replace") for n in names.numpy()]
        step = int(position) // stream.images_per_step
        with self._lock:
            self.count += len(names)
            self.names.extend(names)
            loggers = list(self._loggers)
            if loggers and stream.held_back:
                self._reported_by_callback.add(stream)
            silent = stream in self._reported_by_callback
        for callback in loggers:
            callback._note(names, step if stream.held_back else None)
        # A training pipeline a callback reported on is decoding ahead of a
        # `fit` that has ended: nothing to tell.
        if not loggers and not silent:
            for name in names:
                logger.warning(
                    "Skipped image file %s: it cannot be decoded (corrupt, "
                    "truncated or not an image).", name,
                )
        return False

    def attach(self, callback):
        with self._lock:
            if callback not in self._loggers:
                self._loggers.append(callback)

    def detach(self, callback):
        with self._lock:
            if callback in self._loggers:
                self._loggers.remove(callback)

    def reset(self):
        with self._lock:
            self.count = 0
            self.names.clear()


_SKIPPED = _SkipLog()


def skipped_files():
    """How many times the decoders of this process skipped a file.

    Counts every pass that reached the file, including the passes decoded
    ahead of use; `CorruptFileLogger` counts what training consumed.
    """
    return _SKIPPED.count


def skipped_file_names():
    """The names of the last (up to 1000) skipped files, oldest first."""
    return list(_SKIPPED.names)


def reset_skipped_files():
    """Sets the skipped-file count back to zero."""
    _SKIPPED.reset()


class CorruptFileLogger(keras.callbacks.Callback):
    """Logs, at each epoch's end, the files skipped in the data it used.

    A skip counts once per pass in which training (or validation) used the
    data around the file: skips of a training pipeline count when training
    reaches the step whose batch follows the file (see the notes above
    `_Stream`), never for passes decoded ahead but not trained on. While it
    runs, the files are named in its epoch line instead of one warning per
    skip. Adds ``skipped_files`` (this epoch's count) to the epoch's logs, so
    that `keras.callbacks.CSVLogger` or TensorBoard placed after it record
    it; ``total`` holds the count of the whole run.
    """

    _SHOWN = 10

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._held = []  # (step, names) of training skips not yet reached
        self._epoch = []  # names counted in this epoch
        self._steps = 0  # training steps taken in this `fit`
        self._epoch_start = 0
        self.total = 0

    def _note(self, names, step):
        with self._lock:
            if step is None:
                self._epoch.extend(names)
            else:
                self._held.append((step, names))

    def _release(self):
        with self._lock:
            ready = [names for step, names in self._held if step < self._steps]
            self._held = [(step, names) for step, names in self._held if step >= self._steps]
            for names in ready:
                self._epoch.extend(names)

    def on_train_begin(self, logs=None):
        with self._lock:
            self._held, self._epoch, self._steps = [], [], 0
        _SKIPPED.attach(self)

    def on_train_end(self, logs=None):
        _SKIPPED.detach(self)
        with self._lock:
            self._held = []  # decoded ahead, never trained on

    def on_epoch_begin(self, epoch, logs=None):
        with self._lock:
            self._epoch_start = self._steps

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the epoch's last step so far (with steps_per_execution,
        # the last of the execution).
        with self._lock:
            self._steps = self._epoch_start + batch + 1
        if self._held:
            self._release()

    def on_epoch_end(self, epoch, logs=None):
        self._release()
        with self._lock:
            names, self._epoch = self._epoch, []
        self.total += len(names)
        if names:
            distinct = list(dict.fromkeys(names))
            shown = ", ".join(distinct[: self._SHOWN])
            more = len(distinct) - self._SHOWN
            logger.warning(
                "Epoch %d: skipped %d image(s) that cannot be decoded (corrupt, "
                "truncated or not an image; %d in this run), from %d file(s): %s%s",
                epoch + 1, len(names), self.total, len(distinct), shown,
                f" and {more} more" if more > 0 else "",
            )
        if logs is not None:
            logs["skipped_files"] = len(names)


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


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_labels(num_classes):
    """A batch map: fails, naming the files, on a label outside 0..N-1."""

    def check(images, labels, names):
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


def _decode_groups(ds, image_fn, *, payload_is_path, group_size, deterministic, parallelism):
    """Decodes the elements in groups; a file that fails is left out.

    tf.data catches errors only at a dataset's boundary. Each group of
    ``group_size`` elements therefore becomes a small dataset: a plain map
    decodes its images and `ignore_errors` drops the ones that fail. A scan
    notes the positions that came through: the names of the files between
    two of them (``missing``) travel with the later one, and a closing
    element (``at_end``) carries those after the last. The nested dataset
    costs the same for a group as it would for one image, so per image it
    is nearly free, and no image is copied on the way.

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

        def account(last, element):
            image, label, name, position = element
            missing = names[last + 1 : position]
            return position, (image, label, name, tf.equal(position, count), missing)

        return decoded.concatenate(closing).scan(tf.constant(-1), account)

    # A group per thread, and as many started ahead: when one ends, the
    # next is already under way. (AUTOTUNE here measured 8-13 % more CPU per
    # image for the same work on 2 cores.) In order, whole groups follow
    # each other: the files' order; otherwise any image that is ready.
    return ds.batch(group_size).interleave(
        decode_group, cycle_length=2 * parallelism, num_parallel_calls=parallelism,
        block_length=group_size + 1 if deterministic else 1, deterministic=deterministic,
    )


def _handle_failures(ds, strict, stream):
    """Stops on (strict) or skips and records the files that failed.

    Each skip is recorded with the position of the next image in the
    pipeline's output, which tells `CorruptFileLogger` when training reaches
    it. Returns a dataset of ``(image, label, name)``.
    """

    def locate(kept, element):
        image, label, name, at_end, missing = element
        return kept + 1 - tf.cast(at_end, tf.int64), (image, label, name, at_end, missing, kept)

    def keep(image, label, name, at_end, missing, position):
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
                lambda: tf.reshape(tf.py_function(
                    lambda names, where: _SKIPPED.record(stream, names, where),
                    [missing, position], tf.bool,
                ), []),
            )
        with tf.control_dependencies([guard]):
            return tf.logical_not(at_end)

    if strict:
        ds = ds.map(lambda *element: (*element, tf.constant(0, tf.int64)))
    else:
        ds = ds.scan(tf.constant(0, tf.int64), locate)
    return ds.filter(keep).map(lambda image, label, name, at_end, missing, position: (image, label, name))


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
        private_threads: size of a private thread pool for this pipeline,
            and the number of images decoded at once (default: the cores
            this process may use).
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
        parallelism=private_threads or _available_cores(),
    )
    replicas_per_pipeline = (
        max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines)
        if input_context is not None
        else 1
    )
    stream = _Stream(
        images_per_step=batch_size * replicas_per_pipeline,
        held_back=training and repeat,
    )
    ds = _handle_failures(ds, strict, stream)
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
