"""The "demo" dataset: scikit-learn's 1797 handwritten digits, as JPEG files.

The digits (8x8, 16 grey levels, 10 classes) ship inside scikit-learn, so the
demo trains offline. Each digit is upscaled to `IMAGE_SIZE` pixels (bilinear),
scaled to 0..255 and encoded as a grayscale JPEG: the demo then goes through
the very decode and transform code that ImageNet files go through
(grayscale -> RGB included).

The split is fixed and needs no random generator: within each class, in the
order scikit-learn gives, every fifth digit (positions 2, 7, 12, ...) is a
validation digit, the others are training digits (about 80 % / 20 %,
stratified).
"""

import functools

import numpy as np
import tensorflow as tf

IMAGE_SIZE = 32
NUM_CLASSES = 10
CLASS_NAMES = tuple(str(digit) for digit in range(NUM_CLASSES))
SPLITS = ("train", "validation")
_VALIDATION_EVERY = 5
_VALIDATION_PHASE = 2


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            'The "demo" dataset needs scikit-learn, which bundles the digits. '
            'Install it with: pip install "keras-senet[demo]"'
        ) from error
    digits = load_digits()
    return digits.images, digits.target


def split_indices(labels):
    """Returns ``{"train": idx, "validation": idx}`` for the fixed split."""
    labels = np.asarray(labels)
    validation = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        rank = np.arange(len(positions))
        validation[positions[rank % _VALIDATION_EVERY == _VALIDATION_PHASE]] = True
    return {
        "train": np.flatnonzero(~validation),
        "validation": np.flatnonzero(validation),
    }


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(
            f'The "demo" dataset has the splits {SPLITS}. Received: split={split!r}'
        )


@functools.lru_cache(maxsize=1)
def _encoded():
    images, labels = _load_digits()
    # 0..16 grey levels -> 0..255, upscaled, one grayscale JPEG per digit.
    pixels = tf.constant(images[..., None] * (255.0 / 16.0), tf.float32)
    pixels = tf.image.resize(pixels, (IMAGE_SIZE, IMAGE_SIZE), method="bilinear")
    pixels = tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.uint8)
    encoded = [
        tf.io.encode_jpeg(image, format="grayscale", quality=95).numpy()
        for image in pixels
    ]
    return np.array(encoded, dtype=object), labels.astype(np.int32)


def load_split(split):
    """The encoded JPEGs, labels (int32) and names of one split.

    Returns:
        ``(encoded, labels, names)``: NumPy arrays of bytes, int32 labels
        0..9 and names ``"demo/<split>/<index>"`` (used in error messages).
    """
    _check_split(split)
    encoded, labels = _encoded()
    indices = split_indices(labels)[split]
    names = np.array([f"demo/{split}/{i:04d}" for i in indices], dtype=object)
    return encoded[indices], labels[indices], names


def split_size(split):
    """How many digits a split holds, without encoding them."""
    _check_split(split)
    _, labels = _load_digits()
    return len(split_indices(labels)[split])
