"""Weights: loading a file of ours. (The published-weights registry comes
with the weights issue.)"""

import os


def load_into(model, weights, *, model_id, include_top, classes):
    if weights == "imagenet":
        raise ValueError(
            f"Pretrained ImageNet weights for {model_id!r} are not available "
            "yet in this version of keras-senet. Use weights=None or "
            "weights=<path to a .weights.h5 file>."
        )
    path = os.fspath(weights)
    if not path.endswith(".weights.h5"):
        raise ValueError(
            "`weights` must be None, 'imagenet' or a path ending in "
            f"'.weights.h5'. Received: weights={path!r}"
        )
    model.load_weights(path)
