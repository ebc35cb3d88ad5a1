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

import functools
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
_DCT_RATIOS = (1, 2, 4, 8)  # the scales libjpeg's IDCT decodes at
_WALK_DOUBLINGS = 10  # follows up to 2**10 marker segments
# A 1x1 grey JPEG: what the header reader reads when a file is not a JPEG.
_STAND_IN_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010101012c012c0000ffdb004300100b0c0e0c0a100e0d0e12"
    "11101318281a181616183123251d283a333d3c3933383740485c4e404457453738506d51"
    "575f626768673e4d71797064785c656763ffc0000b080001000101011100ffc400140001"
    "00000000000000000000000000000007ffc4001410010000000000000000000000000000"
    "0000ffda0008010100003f003f7fffd9"
)


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


def _jpeg_reaches_eoi(data):
    """Walks the JPEG's marker segments to the end-of-image marker.

    From the start-of-image marker, each segment is skipped by its length
    (so that the APP segments' contents, such as an EXIF thumbnail with its
    own markers, are never mistaken for the image's), and each scan's
    entropy-coded data runs to the next marker: inside a scan FF is only
    followed by 00 (a stuffed byte), D0-D7 (restart markers) or FF (fill).
    True when the walk meets EOI after at least one scan: the image's data is
    all there, whatever follows (padding, a phone's appended video or maker
    data). False when the file ends first (truncated) or the walk runs off.

    Without loops (whose mere presence in a branch slows every decode that
    does not take it): the successor of every marker-like position is found
    at once, and the walk followed by pointer doubling, `_WALK_DOUBLINGS`
    times (up to 1024 segments).
    """
    raw = tf.io.decode_raw(data, tf.uint8)
    b = tf.cast(tf.concat([raw, tf.zeros([4], tf.uint8)], 0), tf.int32)
    n = tf.size(raw)
    head, code = b[:-4], b[1:-3]
    is_marker = tf.logical_and(
        tf.equal(head, 0xFF),
        tf.logical_not(
            tf.logical_or(
                tf.logical_or(tf.equal(code, 0x00), tf.equal(code, 0xFF)),
                tf.logical_and(code >= 0xD0, code <= 0xD7),
            )
        ),
    )
    positions = tf.concat([tf.cast(tf.where(is_marker)[:, 0], tf.int32), [n]], 0)
    last = tf.size(positions) - 1  # the end of the data: a sink
    codes = tf.gather(b, positions + 1)
    lengths = tf.gather(b, positions + 2) * 256 + tf.gather(b, positions + 3)
    standalone = tf.logical_or(tf.equal(codes, 0xD8), tf.equal(codes, 0x01))
    # A segment (and a scan's header) ends at p + 2 + length; the next
    # marker is the first at or after that (libjpeg skips stray bytes too).
    ends = positions + tf.where(standalone, 2, 2 + lengths)
    successor = tf.minimum(tf.searchsorted(positions, ends, out_type=tf.int32), last)
    nodes = tf.range(last + 1)
    sink = tf.logical_or(tf.equal(codes, 0xD9), tf.equal(nodes, last))
    successor = tf.where(sink, nodes, successor)
    scan_on_path = tf.equal(codes, 0xDA)
    for _ in range(_WALK_DOUBLINGS):
        scan_on_path = tf.logical_or(scan_on_path, tf.gather(scan_on_path, successor))
        successor = tf.gather(successor, successor)
    start = tf.minimum(tf.searchsorted(positions, [2], out_type=tf.int32)[0], last)
    end = successor[start]
    return tf.logical_and(
        tf.logical_and(tf.equal(codes[end], 0xD9), end < last), scan_on_path[start]
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
        lambda: _jpeg_reaches_eoi(data),
    )


def _assert_reaches_eoi(data):
    return tf.debugging.Assert(
        _jpeg_reaches_eoi(data),
        ["Truncated JPEG: the data ends before the end-of-image marker"],
        name="check_jpeg_end",
    )


def _scaled_window(window, ratio):
    """A window of the full image in the pixels of its 1/ratio-scale decode.

    libjpeg's scaled IDCT turns each ``ratio x ratio`` square of pixels into
    one (the output is ``ceil(side / ratio)`` wide). The window's edges snap
    to the nearest multiples of ``ratio``: the decode is then exactly that
    snapped window at reduced scale, which differs from the window drawn by
    less than ``ratio / 2`` pixels per edge: as ``ratio`` is used only for
    windows at least ``ratio`` times the output size, less than half an
    output pixel.
    """
    if ratio == 1:
        return window
    corners = (tf.concat([window[:2], window[:2] + window[2:]], 0) + ratio // 2) // ratio
    return tf.concat([corners[:2], tf.maximum(corners[2:] - corners[:2], 1)], 0)


def _ratio_index(window, min_size):
    """Index into `_DCT_RATIOS` of the largest IDCT scale that keeps both
    sides of ``window`` at least ``min_size``."""
    shorter = tf.minimum(window[2], window[3])
    return tf.gather([0, 0, 1, 1, 2, 2, 2, 2, 3], tf.minimum(shorter // min_size, 8))


def decode_window(data, window_fn, *, dct_method="", min_size=None):
    """Decodes the window ``window_fn(height, width)`` of an encoded image.

    ``window_fn`` gets the full image's height and width (int32 scalars) and
    returns ``(offset_y, offset_x, crop_height, crop_width)``. JPEGs decode
    only that window (with libjpeg's ``dct_method``: ``""``, the exact
    default, or ``"INTEGER_FAST"``); other formats decode fully and are then
    cropped. Raises (at run time) on a corrupt, truncated or unknown file.

    With ``min_size``, a JPEG window whose sides are at least twice
    ``min_size`` decodes at libjpeg's reduced scale (1/2, 1/4 or 1/8: the
    IDCT makes the smaller image directly, at a fraction of the cost), the
    smallest that keeps both sides at least ``min_size``: the result is then
    the window at that scale, for a resize to ``min_size`` or less.
    """
    is_jpeg = tf.io.is_jpeg(data)
    # The JPEG's size from its header; a stand-in for other formats keeps
    # this outside the branches (nested branches cost more than the work).
    shape = tf.image.extract_jpeg_shape(tf.where(is_jpeg, data, _STAND_IN_JPEG))
    window = tf.stack(window_fn(shape[0], shape[1]))
    if min_size is None:
        ratios, index = (1,), tf.constant(0)
    else:
        ratios, index = _DCT_RATIOS, _ratio_index(window, min_size)

    def jpeg(ratio):
        return tf.image.decode_and_crop_jpeg(
            data, _scaled_window(window, ratio), channels=3, ratio=ratio,
            dct_method=dct_method,
        )

    def walked_jpeg():
        # A JPEG whose last bytes hold the end-of-image marker is complete;
        # any other (rare) has its structure walked (`jpeg_is_complete`).
        with tf.control_dependencies([_assert_reaches_eoi(data)]):
            return tf.switch_case(tf.identity(index), [functools.partial(jpeg, r) for r in ratios])

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        shape = tf.shape(image)
        top, left, height, width = window_fn(shape[0], shape[1])
        return image[top : top + height, left : left + width]

    # One branch point (`ratio` is an attribute of the op: one decode per
    # scale): JPEG at each scale, a JPEG to walk, another format. Every op
    # here costs each image some time, a branch inside a taken branch more.
    branches = [functools.partial(jpeg, r) for r in ratios] + [walked_jpeg, other]
    kind = tf.where(
        is_jpeg, tf.where(_has_eoi_near_end(data), index, len(ratios)), len(ratios) + 1
    )
    image = tf.switch_case(kind, branches)
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
    reduced_scale=True,
):
    """Random-resized crop (decoding only the window), resize, flip.

    Returns float32 values on the 0..255 scale: the resize's own output,
    left unrounded for `normalize` (or `to_uint8`) to take as it is. The
    window is cast to float32 before the resize, which TensorFlow's bilinear
    kernel runs about 1.5 times faster on than on uint8. With
    ``reduced_scale``, a window at least twice ``image_size`` decodes at
    libjpeg's reduced scale (see `decode_window`): the resize then starts
    from an image a few grey levels from the full-scale one's.
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

    image = decode_window(
        data, window_fn, dct_method=TRAIN_DCT_METHOD,
        min_size=image_size if reduced_scale else None,
    )
    image = tf.image.resize(
        tf.cast(image, tf.float32), (image_size, image_size), method=interpolation
    )
    if interpolation not in _CONVEX_INTERPOLATIONS:  # cubic kernels overshoot
        image = tf.clip_by_value(image, 0.0, 255.0)
    if random_flip:
        # A branch, not a select: the unflipped half of the images is not
        # copied at all.
        flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: tf.identity(image))
    return image


def eval_size(image_size, crop_pct):
    """The shorter side before the centre crop: ``floor(size / crop_pct)``
    (timm's rule; 256 for 224 at 0.875)."""
    return int(math.floor(image_size / crop_pct))


def _triangle(x):
    return tf.maximum(1.0 - tf.abs(x), 0.0)


def _keys_cubic(x, a=-0.5):
    x = tf.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


# PIL's antialiased filters (what timm's eval transform resizes with):
# support radius at scale 1, kernel.
_PIL_FILTERS = {"bilinear": (1.0, _triangle), "bicubic": (2.0, _keys_cubic)}


def _pil_taps(in_size, out_size, first, count, interpolation):
    """Input pixels and weights of output pixels ``first .. first + count``
    of PIL's resize from ``in_size`` to ``out_size`` pixels.

    PIL's ``precompute_coeffs``: output pixel ``i`` is centred on input
    coordinate ``(i + 0.5) * scale``; when shrinking, the filter widens by
    the scale (antialiasing); the taps inside the image are normalised to
    sum to one. Returns ``(index, weight)``, both ``(count, taps)`` (taps
    outside the image have weight 0 and a valid index).
    """
    radius, kernel = _PIL_FILTERS[interpolation]
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    filter_scale = tf.maximum(scale, 1.0)
    support = radius * filter_scale
    taps = 2 * tf.cast(tf.math.ceil(support), tf.int32) + 1
    centre = (tf.cast(first + tf.range(count), tf.float64) + 0.5) * scale
    # C's (int) truncation; only the (clipped) negative starts differ.
    start = tf.maximum(tf.cast(centre - support + 0.5, tf.int32), 0)
    stop = tf.minimum(tf.cast(centre + support + 0.5, tf.int32), in_size)
    x = start[:, None] + tf.range(taps)[None, :]
    weight = kernel((tf.cast(x, tf.float64) - centre[:, None] + 0.5) / filter_scale)
    weight = tf.where(x < stop[:, None], weight, 0.0)
    weight /= tf.reduce_sum(weight, axis=1, keepdims=True)
    return tf.minimum(x, in_size - 1), tf.cast(weight, tf.float32)


def _pil_resize_crop(image, new_h, new_w, top, left, size, interpolation):
    """The ``size`` x ``size`` window at (top, left) of PIL's antialiased
    resize of ``image`` to ``new_h`` x ``new_w``, in float32.

    Rows, then columns: each output pixel a weighted sum of a few taps (PIL's
    filter support and pixel centres), computed only for the pixels the crop
    keeps: about 1.6 times faster than `tf.image.resize` with
    ``antialias=True`` of the whole image, with the same pixels.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    x = tf.reshape(tf.cast(image, tf.float32), tf.stack([height, width * 3]))
    index, weight = _pil_taps(height, new_h, top, size, interpolation)
    x = tf.reduce_sum(tf.gather(x, index) * weight[:, :, None], axis=1)  # (size, width * 3)
    x = tf.transpose(tf.reshape(x, tf.stack([size, width, 3])), [1, 0, 2])
    x = tf.reshape(x, tf.stack([width, size * 3]))
    index, weight = _pil_taps(width, new_w, left, size, interpolation)
    x = tf.reduce_sum(tf.gather(x, index) * weight[:, :, None], axis=1)  # (size, size * 3)
    return tf.transpose(tf.reshape(x, [size, size, 3]), [1, 0, 2])


def eval_image(data, *, image_size, crop_pct, interpolation):
    """The reference eval transform of the published weights.

    As timm / torchvision do it: the shorter side resized to
    ``floor(size / crop_pct)`` and the longer one to
    ``floor(short * long / shorter)`` (antialiased), then a centre crop whose
    offsets are ``round((side - size) / 2)``, halves to even. Bilinear and
    bicubic resize with PIL's filters, computing only the crop's pixels;
    other methods with `tf.image.resize`.
    """
    image = decode_full(data)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = eval_size(image_size, crop_pct)
    shorter = tf.minimum(height, width)
    # Integer arithmetic, like torchvision's int(short * long / shorter).
    new_h = tf.where(height == shorter, short, (short * height) // shorter)
    new_w = tf.where(width == shorter, short, (short * width) // shorter)
    top = _half_even_half(new_h - image_size)
    left = _half_even_half(new_w - image_size)
    if interpolation in _PIL_FILTERS:
        image = to_uint8(_pil_resize_crop(image, new_h, new_w, top, left, image_size, interpolation))
    else:
        image = tf.image.resize(image, tf.stack([new_h, new_w]), method=interpolation, antialias=True)
        image = to_uint8(image)[top : top + image_size, left : left + image_size]
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
