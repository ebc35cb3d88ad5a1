"""ImageNet-1k helpers: `preprocess_input`, `decode_predictions`, class names.

The 1000 class names (WordNet ids and lemmas, in the standard label order,
which is the lexicographic order of the ids) ship with the package in
``data/imagenet_classes.json``; nothing is downloaded.
"""

import functools
import json
import operator
import os

import keras
import numpy as np

# What the published SE checkpoints expect (RGB, [0, 1], then normalised).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CLASSES_FILE = os.path.join(
    os.path.dirname(__file__), "data", "imagenet_classes.json"
)


@functools.lru_cache(maxsize=1)
def _load_classes():
    with open(_CLASSES_FILE, encoding="utf-8") as f:
        entries = json.load(f)
    if len(entries) != 1000:
        raise RuntimeError(
            f"{_CLASSES_FILE} is damaged: expected 1000 classes, found "
            f"{len(entries)}. Reinstall keras-senet."
        )
    return tuple((wnid, lemmas) for wnid, lemmas in entries)


@functools.lru_cache(maxsize=1)
def _short_names():
    # keras.applications' names: the first WordNet lemma with spaces as
    # underscores ('Indian_elephant', 'jack-o'-lantern', 'Loafer').
    return tuple(
        lemmas.split(",")[0].strip().replace(" ", "_")
        for _, lemmas in _load_classes()
    )


def class_names():
    """The 1000 short class names, in label order.

    The same strings as keras.applications' ``decode_predictions``
    (``'Indian_elephant'``, ``'tench'``, ...): the first WordNet lemma of each
    class with spaces written as underscores.
    """
    return list(_short_names())


def class_descriptions():
    """The 1000 full WordNet lemma lists (``'tench, Tinca tinca'``), in label
    order."""
    return [lemmas for _, lemmas in _load_classes()]


def wnids():
    """The 1000 WordNet ids (``n01440764`` ...), in label order."""
    return [wnid for wnid, _ in _load_classes()]


def preprocess_input(
    x, data_format=None, mean=IMAGENET_MEAN, std=IMAGENET_STD
):
    """Preprocesses RGB images for the SE models' published weights.

    Args:
        x: images with values in [0, 255], RGB, as a NumPy array, a tensor
            or a nested list, with the channels last (or first, see
            ``data_format``); 3D (one image) or 4D (a batch).
        data_format: ``"channels_last"`` or ``"channels_first"``; defaults to
            ``keras.config.image_data_format()``.
        mean, std: per-channel statistics, on the [0, 1] scale (3 finite
            numbers each; ``std`` positive).

    Returns:
        ``(x / 255 - mean) / std``, float32 (a NumPy array for NumPy or list
        input, a tensor for tensor input).
    """
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    mean = _check_statistics(mean, "mean", positive=False)
    std = _check_statistics(std, "std", positive=True)
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x, "float32")
        except (TypeError, ValueError):
            pass  # refused just below, with the type received
    if isinstance(x, (list, tuple)) or not hasattr(x, "shape"):
        raise ValueError(
            "`preprocess_input` expects images: a NumPy array, a tensor or a "
            "nested list of numbers (N, H, W, 3). Received: x of type "
            f"{type(x).__name__}"
        )
    ndim = len(x.shape)
    channel_axis = -1 if data_format == "channels_last" else ndim - 3
    if ndim not in (3, 4) or x.shape[channel_axis] != 3:
        raise ValueError(
            "`preprocess_input` expects RGB images of shape (H, W, 3) or "
            "(N, H, W, 3) (channels first: (3, H, W) or (N, 3, H, W)). "
            f"Received: x.shape={tuple(x.shape)}"
        )
    shape = [1] * ndim
    shape[channel_axis] = 3
    scale = np.reshape(255.0 * std, shape)
    offset = np.reshape(255.0 * mean, shape)
    if isinstance(x, np.ndarray):
        return (np.asarray(x, "float32") - offset) / scale
    x = keras.ops.cast(x, "float32")
    return (x - offset) / scale


def _check_statistics(values, name, *, positive):
    """Three finite numbers (``std``: positive ones) as float32."""
    try:
        array = np.asarray(values, "float64")
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape != (3,):
        raise ValueError(
            f"`{name}` must hold 3 numbers (one per RGB channel). "
            f"Received: {name}={values!r}"
        )
    if not np.all(np.isfinite(array)) or (positive and np.any(array <= 0)):
        kind = "positive finite" if positive else "finite"
        raise ValueError(
            f"`{name}` must hold 3 {kind} numbers. Received: {name}={values!r}"
        )
    return array.astype("float32")


def _check_top(top):
    """``top`` as an int in [1, 1000]: Python or NumPy integers, no bools."""
    if isinstance(top, (bool, np.bool_)):
        top = None
    else:
        try:
            top = operator.index(top)
        except TypeError:
            top = None
    if top is None or not 1 <= top <= 1000:
        return None
    return top


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions into ``(wnid, name, score)`` tuples.

    Args:
        preds: array of shape ``(batch, 1000)`` (probabilities or logits).
        top: how many of the best classes to return per image.

    Returns:
        One list per image of ``top`` tuples ``(wnid, name, score)``,
        best first.
    """
    preds = np.asarray(keras.ops.convert_to_numpy(preds))
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of ImageNet predictions, "
            f"shape (samples, 1000). Received: preds.shape={preds.shape}"
        )
    checked = _check_top(top)
    if checked is None:
        raise ValueError(
            f"`top` must be an integer in [1, 1000]. Received: top={top!r}"
        )
    classes = _load_classes()
    names = _short_names()
    results = []
    for row in preds:
        best = np.argsort(-row, kind="stable")[:checked]
        results.append([(classes[i][0], names[i], float(row[i])) for i in best])
    return results
