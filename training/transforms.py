"""Decoding and the train / eval transforms of the ImageNet input pipeline.

Every function here works on ONE encoded image (a scalar string tensor) and
returns an ``(image_size, image_size, 3)`` image on the 0..255 scale, which
`normalize` (or `to_uint8`) finishes, image by image.

- Train: the random-resized crop is sampled from the JPEG header's size alone
  and only that window is decoded (`tf.image.decode_and_crop_jpeg`, with the
  fast integer IDCT), then resized to ``image_size`` (float32 out, not
  rounded) and optionally flipped. Randomness is stateless: each image
  carries its own seed, so a ``shuffle_seed`` makes the augmentation
  reproducible.
- Eval: full decode, resize of the shorter side to
  ``round(image_size / crop_pct)`` (antialiased, like PIL), rounding to
  ``uint8`` (like PIL), centre crop. Deterministic.

The decoders accept what ImageNet really holds: baseline and progressive
JPEGs in RGB, grayscale or CMYK (all come out RGB), and PNG/GIF/BMP files
with a ``.JPEG`` name. A JPEG whose data ends before its end-of-image
marker is rejected (`jpeg_is_complete`): TensorFlow's cropping decoder would
otherwise accept a truncated file as long as the window lies in the part
that is present. Data after the image (padding, the video of a Motion Photo)
is allowed, as libjpeg allows it.
"""

import math

import tensorflow as tf

INTERPOLATIONS = (
    "bilinear", "bicubic", "nearest", "area",
    "lanczos3", "lanczos5", "gaussian", "mitchellcubic",
)
# Resize methods whose outputs are convex combinations of input pixels, so
# they stay within [0, 255] and need no clipping.
_CONVEX_INTERPOLATIONS = ("bilinear", "nearest", "area")
# libjpeg's fast integer IDCT: a few grey levels off the exact one, which
# the random crop, resize and flip make irrelevant; about 7 % cheaper crop
# decode. Training only: evaluation decodes exactly.
TRAIN_DCT_METHOD = "INTEGER_FAST"
_MAX_ATTEMPTS = 10
_EOI_SEARCH_BYTES = 32  # Some encoders pad a few bytes after the EOI marker.
_SCAN_CHUNK = 1 << 16  # Bytes of entropy-coded data searched per loop step.


def check_interpolation(interpolation):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {INTERPOLATIONS}. "
            f"Received: interpolation={interpolation!r}"
        )


def _has_eoi_near_end(data):
    """Whether the end-of-image marker (FF D9) is in the file's last bytes."""
    length = tf.strings.length(data)
    start = tf.maximum(length - _EOI_SEARCH_BYTES, 0)
    tail = tf.io.decode_raw(tf.strings.substr(data, start, length - start), tf.uint8)
    return tf.reduce_any(
        tf.logical_and(tf.equal(tail[:-1], 0xFF), tf.equal(tail[1:], 0xD9))
    )


def _first_marker(chunk):
    """``(found, offset)`` of the first marker in entropy-coded bytes.

    Inside a scan, FF is followed by 00 (a stuffed FF byte), by D0-D7 (a
    restart marker, part of the scan) or by more FF (fill); any other byte
    after FF is a marker that ends the scan.
    """
    head = tf.cast(chunk[:-1], tf.int32)
    code = tf.cast(chunk[1:], tf.int32)
    marker = tf.logical_and(
        tf.equal(head, 0xFF),
        tf.logical_not(
            tf.logical_or(
                tf.logical_or(tf.equal(code, 0x00), tf.equal(code, 0xFF)),
                tf.logical_and(code >= 0xD0, code <= 0xD7),
            )
        ),
    )
    marker = tf.concat([marker, [True]], 0)  # a sentinel: argmax of no marker
    offset = tf.cast(tf.argmax(tf.cast(marker, tf.int32)), tf.int32)
    return offset < tf.size(marker) - 1, offset


def _jpeg_reaches_eoi(data):
    """Walks the JPEG's marker segments to the end-of-image marker.

    From the start-of-image marker, each segment is skipped by its length
    (so that the APP segments' contents, such as an EXIF thumbnail with its
    own markers, are never mistaken for the image's); each scan's
    entropy-coded data is searched for the marker that ends it. True when
    the walk meets EOI after at least one scan: the image's data is all
    there, whatever follows it (padding, a phone's appended video or
    metadata). False when the file ends first (truncated) or the structure
    is broken.
    """
    n = tf.strings.length(data)
    running, complete, broken = 0, 1, 2

    def header_step(pos, seen_scan):
        head = tf.cast(tf.io.decode_raw(tf.strings.substr(data, tf.minimum(pos, n), 4), tf.uint8, fixed_length=4), tf.int32)
        code = head[1]
        after = pos + 2 + head[2] * 256 + head[3]  # past a segment with a length
        is_rst = tf.logical_and(code >= 0xD0, code <= 0xD7)
        standalone = tf.logical_or(tf.logical_or(is_rst, tf.equal(code, 0x01)), tf.equal(code, 0xD8))
        length_ok = head[2] * 256 + head[3] >= 2
        status = tf.where(
            tf.logical_or(pos + 2 > n, tf.not_equal(head[0], 0xFF)), broken,
            tf.where(tf.equal(code, 0xD9), tf.where(seen_scan, complete, broken),
                     tf.where(tf.logical_or(standalone, tf.equal(code, 0xFF)), running,
                              tf.where(length_ok, running, broken))),
        )
        next_pos = tf.where(
            tf.equal(code, 0xFF), pos + 1, tf.where(standalone, pos + 2, after)
        )
        in_scan = tf.logical_and(tf.equal(status, running), tf.equal(code, 0xDA))
        return next_pos, status, in_scan

    def scan_step(pos):
        chunk = tf.io.decode_raw(tf.strings.substr(data, tf.minimum(pos, n), _SCAN_CHUNK + 1), tf.uint8)
        found, offset = _first_marker(chunk)
        length = tf.size(chunk)
        status = tf.where(
            tf.logical_or(found, pos + length < n), running, broken
        )
        # Without a marker, continue from the chunk's last byte (an FF there
        # pairs with the next chunk's first byte).
        next_pos = tf.where(found, pos + offset, pos + tf.maximum(length - 1, 1))
        return next_pos, status, tf.logical_not(found)

    def body(pos, status, in_scan, seen_scan):
        next_pos, status, next_in_scan = tf.cond(
            in_scan, lambda: scan_step(pos), lambda: header_step(pos, seen_scan)
        )
        return next_pos, status, next_in_scan, tf.logical_or(seen_scan, next_in_scan)

    _, status, _, _ = tf.while_loop(
        lambda pos, status, in_scan, seen_scan: tf.equal(status, running),
        body,
        (tf.constant(2), tf.constant(running), tf.constant(False), tf.constant(False)),
        maximum_iterations=n,
    )
    return tf.equal(status, complete)


# Called, not inlined, where images are decoded: the walk's loop then costs
# nothing in the many decodes that do not run it.
_jpeg_reaches_eoi_call = tf.function(
    _jpeg_reaches_eoi,
    input_signature=[tf.TensorSpec([], tf.string)],
    autograph=False,
    experimental_attributes={"_noinline": True},
)


def jpeg_is_complete(data):
    """Whether a JPEG's data runs to its end-of-image marker.

    Fast path: FF D9 among the file's last 32 bytes (inside a scan, FF is
    never followed by D9, so this is the image's EOI). Otherwise the file is
    either cut short or carries data after its image, which phones and
    cameras append (padding, Motion Photo video, maker data):
    `_jpeg_reaches_eoi` walks its structure to tell them apart. With the
    header checks that reading the image's size makes, this agrees with
    libjpeg's full decode (TensorFlow's `decode_jpeg`, PIL).
    """
    return tf.cond(
        _has_eoi_near_end(data),
        lambda: tf.constant(True),
        lambda: _jpeg_reaches_eoi_call(data),
    )


def _assert_reaches_eoi(data):
    return tf.debugging.Assert(
        _jpeg_reaches_eoi_call(data),
        ["Truncated JPEG: the data ends before the end-of-image marker"],
        name="check_jpeg_end",
    )


def decode_window(data, window_fn, *, dct_method=""):
    """Decodes the window ``window_fn(height, width)`` of an encoded image.

    ``window_fn`` gets the full image's height and width (int32 scalars) and
    returns ``(offset_y, offset_x, crop_height, crop_width)``. JPEGs decode
    only that window (with libjpeg's ``dct_method``: ``""``, the exact
    default, or ``"INTEGER_FAST"``); other formats decode fully and are then
    cropped. Raises (at run time) on a corrupt, truncated or unknown file.
    """

    def jpeg(walk):
        # A JPEG whose last bytes hold the end-of-image marker is complete;
        # any other has its structure walked (`jpeg_is_complete`).
        with tf.control_dependencies([_assert_reaches_eoi(data)] if walk else []):
            shape = tf.image.extract_jpeg_shape(data)
        window = tf.stack(window_fn(shape[0], shape[1]))
        return tf.image.decode_and_crop_jpeg(data, window, channels=3, dct_method=dct_method)

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        shape = tf.shape(image)
        top, left, height, width = window_fn(shape[0], shape[1])
        return image[top : top + height, left : left + width]

    # One branch point: complete-looking JPEG, JPEG to walk, other format.
    kind = tf.where(tf.io.is_jpeg(data), tf.where(_has_eoi_near_end(data), 0, 1), 2)
    image = tf.switch_case(kind, [lambda: jpeg(False), lambda: jpeg(True), other])
    image.set_shape([None, None, 3])
    return image


def decode_full(data):
    """Decodes a whole image to uint8 RGB (same checks as `decode_window`)."""
    return decode_window(data, lambda height, width: (0, 0, height, width))


def _centre_window_with_aspect(height, width, aspect_ratio_range):
    """The largest centred window whose aspect ratio lies in the range."""
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    aspect = tf.clip_by_value(w / h, aspect_ratio_range[0], aspect_ratio_range[1])
    crop_w = tf.minimum(w, h * aspect)
    crop_h = tf.minimum(h, w / aspect)
    crop_h = tf.clip_by_value(tf.cast(tf.round(crop_h), tf.int32), 1, height)
    crop_w = tf.clip_by_value(tf.cast(tf.round(crop_w), tf.int32), 1, width)
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_crop_window(height, width, seed, *, area_range, aspect_ratio_range):
    """Samples a random-resized-crop window (Inception style).

    Up to 10 attempts at a window whose area fraction lies in ``area_range``
    and aspect ratio (width / height) in ``aspect_ratio_range``; when none
    fits, the centred window with the image's aspect ratio clamped to the
    range (as timm and torchvision do).
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([height, width, 3]),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    sampled = (begin[0], begin[1], size[0], size[1])
    fallback = _centre_window_with_aspect(height, width, aspect_ratio_range)
    failed = tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width))
    return tuple(
        tf.where(failed, f, s) for f, s in zip(fallback, sampled)
    )


def to_uint8(image):
    """Clips and rounds (half to even) to uint8; uint8 input is returned as is."""
    if image.dtype == tf.uint8:
        return image
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def train_image(
    data,
    seed,
    *,
    image_size,
    area_range,
    aspect_ratio_range,
    random_flip,
    interpolation,
):
    """Random-resized crop (decoding only the window), resize, flip.

    Returns float32 values on the 0..255 scale: the resize's own output,
    left unrounded for `normalize` (or `to_uint8`) to take as it is. The
    window is cast to float32 before the resize, which TensorFlow's bilinear
    kernel runs about 1.5 times faster on than on uint8.
    """
    crop_seed = tf.stack([seed, tf.constant(0, seed.dtype)])
    flip_seed = tf.stack([seed, tf.constant(1, seed.dtype)])

    def window_fn(height, width):
        return random_crop_window(
            height,
            width,
            crop_seed,
            area_range=area_range,
            aspect_ratio_range=aspect_ratio_range,
        )

    image = decode_window(data, window_fn, dct_method=TRAIN_DCT_METHOD)
    image = tf.image.resize(
        tf.cast(image, tf.float32), (image_size, image_size), method=interpolation
    )
    if interpolation not in _CONVEX_INTERPOLATIONS:  # cubic kernels overshoot
        image = tf.clip_by_value(image, 0.0, 255.0)
    if random_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image


def eval_size(image_size, crop_pct):
    """The shorter side before the centre crop: ``floor(size / crop_pct)``
    (timm's rule; 256 for 224 at 0.875)."""
    return int(math.floor(image_size / crop_pct))


def eval_image(data, *, image_size, crop_pct, interpolation):
    """The reference eval transform of the published weights.

    As timm / torchvision do it: the shorter side resized to
    ``floor(size / crop_pct)`` and the longer one to
    ``floor(short * long / shorter)`` (antialiased), then a centre crop whose
    offsets are ``round((side - size) / 2)``, halves to even.
    """
    image = decode_full(data)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = eval_size(image_size, crop_pct)
    shorter = tf.minimum(height, width)
    # Integer arithmetic, like torchvision's int(short * long / shorter).
    new_h = tf.where(height == shorter, short, (short * height) // shorter)
    new_w = tf.where(width == shorter, short, (short * width) // shorter)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), method=interpolation, antialias=True)
    image = to_uint8(image)
    top = _half_even_half(new_h - image_size)
    left = _half_even_half(new_w - image_size)
    image = image[top : top + image_size, left : left + image_size]
    image.set_shape([image_size, image_size, 3])
    return image


def _half_even_half(excess):
    """``round(excess / 2)`` with halves to even, as Python's round()."""
    return tf.cast(tf.round(tf.cast(excess, tf.float64) / 2.0), tf.int32)


def normalize(images, mean, std):
    """``(x / 255 - mean) / std`` in float32, on one image or a batch.

    Takes uint8 or float32 pixels on the 0..255 scale. The pipeline applies
    it to each image while that image is still in the CPU cache: on a whole
    batch (tens of MB) the same three passes run about three times slower.

    Computed as ``x * scale + offset`` on rows of ``width * 3`` values with
    row-long ``scale`` and ``offset``: TensorFlow's CPU kernels broadcast a
    row over a matrix several times faster than a 3-vector over a 4D tensor.
    """
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    images = tf.cast(images, tf.float32)
    width = images.shape[-2]
    if width is None:
        return images * scale + offset
    rows = tf.reshape(images, [-1, width * 3])
    rows = rows * tf.constant(scale * width, tf.float32) + tf.constant(offset * width, tf.float32)
    normalised = tf.reshape(rows, tf.shape(images))
    normalised.set_shape(images.shape)
    return normalised
