"""Excitation analysis: what the SE gates do, class by class, layer by layer.

The SENet paper (section 7.2, figures of the "excitation" distributions)
shows, for a few classes, the mean gate of every channel at several depths:
early gates are shared across classes, late ones become class specific.
This module reproduces that analysis for any model with `SqueezeExcite`
layers:

- `record_gates(model, images)` -> ``{se layer name: gates (N, C)}``, from a
  model whose outputs are the gates each SE layer computes (its own
  ``squeeze`` and ``excite`` applied to its input tensor);
- `mean_gates_by_class(gates, labels)` -> per-class mean gates;
- `plot_gates(...)` draws them (matplotlib, the ``plot`` extra:
  ``pip install "keras-senet[plot]"``).

Command line (``python -m keras_senet.analysis --help``)::

    python -m keras_senet.analysis --model se_resnet50 --weights imagenet \\
        --images path/to/images --layers conv3_block4_se,conv5_block3_se \\
        --out gates.png

``--images`` is a folder with one sub-folder of images per class (the class
is the sub-folder's name), or ``demo`` for scikit-learn's bundled 8x8 digits
(``pip install scikit-learn``), upscaled.
"""

import argparse
import os
import sys

import keras
import numpy as np

from keras_senet.download import atomic_write

from keras_senet.layers import SqueezeExcite
from keras_senet.layers import SqueezeExciteGates  # noqa: F401 (public here too)


def se_layers(model):
    """The `SqueezeExcite` layers of ``model`` (top level), in graph order."""
    return [layer for layer in model.layers if isinstance(layer, SqueezeExcite)]


def gate_model(model, layer_names=None):
    """A model from ``model``'s input to the gates of its SE layers.

    Args:
        model: a functional model containing `SqueezeExcite` layers.
        layer_names: names of the SE layers to record; ``None``: all.

    Returns:
        A `keras.Model` whose output is a dict ``{layer name: gates}``,
        gates of shape ``(batch, channels)`` in float32, sharing the
        weights of ``model``.
    """
    layers = {layer.name: layer for layer in se_layers(model)}
    if not layers:
        raise ValueError(f"Model {model.name!r} has no SqueezeExcite layers.")
    if layer_names is None:
        layer_names = list(layers)
    elif isinstance(layer_names, str):
        layer_names = [layer_names]
    unknown = [n for n in layer_names if n not in layers]
    if unknown:
        raise ValueError(
            f"Model {model.name!r} has no SqueezeExcite layer named "
            f"{unknown}. Its SE layers are {list(layers)}. "
            f"Received: layer_names={list(layer_names)!r}"
        )
    gates = {}
    for name in layer_names:
        layer = layers[name]
        gates[name] = SqueezeExciteGates(layer, name=f"{name}_gates")(layer.input)
    return keras.Model(model.inputs, gates, name=f"{model.name}_gates")


def record_gates(model, images, layer_names=None, batch_size=32):
    """Records the SE gates of ``model`` for a batch of images.

    Args:
        model: a functional model with `SqueezeExcite` layers.
        images: array ``(N, H, W, 3)`` already preprocessed for ``model``.
        layer_names: SE layer names to record; ``None``: all of them.
        batch_size: images per forward pass.

    Returns:
        ``{layer name: float32 array (N, C)}``, in ``layer_names`` order.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            "`images` must be a 4D batch (N, H, W, C). "
            f"Received: images.shape={images.shape}"
        )
    recorder = gate_model(model, layer_names)
    gates = recorder.predict(images, batch_size=batch_size, verbose=0)
    return {name: np.asarray(gates[name], "float32") for name in recorder.output}


def mean_gates_by_class(gates, labels):
    """Per-class mean gates.

    Args:
        gates: ``{layer name: array (N, C)}`` from `record_gates`.
        labels: ``N`` class labels (integers or strings).

    Returns:
        ``(classes, means)``: the sorted distinct labels, and
        ``{layer name: array (len(classes), C)}`` whose row ``i`` is the mean
        gate vector of the images of ``classes[i]``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"`labels` must be one label per image. Received: labels.shape={labels.shape}"
        )
    classes = np.unique(labels)
    means = {}
    for name, values in gates.items():
        values = np.asarray(values)
        if values.ndim != 2 or len(values) != len(labels):
            raise ValueError(
                f"gates[{name!r}] must have shape (N, C) with N = "
                f"{len(labels)} (one row per label). Received: {values.shape}"
            )
        means[name] = np.stack([values[labels == c].mean(axis=0) for c in classes])
    return classes, means


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "plot_gates needs matplotlib. Install it with: "
            'pip install "keras-senet[plot]"  (or: pip install matplotlib)'
        ) from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def plot_gates(means, classes, path, *, class_names=None, title=None):
    """Plots per-class mean gates, one panel per SE layer, to a PNG file.

    Args:
        means: ``{layer name: array (K, C)}`` from `mean_gates_by_class`.
        classes: the ``K`` class labels of the rows.
        path: the PNG file to write (written to a temporary file in the same
            folder, then renamed into place).
        class_names: optional ``{label: display name}``.
        title: optional figure title.

    Returns:
        ``path``.
    """
    pyplot = _pyplot()
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"`path` must end in '.png'. Received: path={path!r}")
    names = list(means)
    # The constrained layout keeps the figure title clear of the first
    # panel's title (tight_layout ignores suptitle).
    figure, axes = pyplot.subplots(
        len(names),
        1,
        figsize=(8, 2.4 * len(names)),
        squeeze=False,
        layout="constrained",
    )
    for axis, name in zip(axes[:, 0], names):
        for row, label in zip(means[name], classes):
            shown = class_names.get(label, label) if class_names else label
            axis.plot(np.arange(len(row)), row, linewidth=0.8, label=str(shown))
        axis.set_title(name, fontsize=9)
        axis.set_ylim(0.0, 1.0)
        axis.set_xlabel("channel index")
        axis.set_ylabel("mean gate")
    axes[0, 0].legend(fontsize=7, ncol=min(5, len(classes)), loc="upper right")
    if title:
        figure.suptitle(title)
    with atomic_write(path) as temporary:
        try:
            figure.savefig(temporary, format="png", dpi=100)
        finally:
            pyplot.close(figure)
    return path


# ---------------------------------------------------------------- the CLI


def load_image_folder(folder, image_size):
    """Images of ``folder/<class>/*`` resized to ``image_size``, RGB 0-255.

    Returns ``(images float32 (N, S, S, 3), labels, class names)``.
    """
    if not os.path.isdir(folder):
        raise ValueError(
            f"--images must be a folder of class sub-folders or 'demo'. "
            f"Received: {folder!r}"
        )
    class_names = sorted(
        d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
    )
    if not class_names:
        raise ValueError(f"--images folder {folder!r} has no class sub-folders.")
    images, labels = [], []
    for label, class_name in enumerate(class_names):
        class_dir = os.path.join(folder, class_name)
        for file_name in sorted(os.listdir(class_dir)):
            file_path = os.path.join(class_dir, file_name)
            try:
                image = keras.utils.load_img(
                    file_path, color_mode="rgb", target_size=(image_size, image_size)
                )
            except Exception as error:  # PIL raises many types
                raise ValueError(
                    f"Cannot read image file {file_path!r}: {error}"
                ) from None
            images.append(keras.utils.img_to_array(image, dtype="float32"))
            labels.append(label)
    if not images:
        raise ValueError(f"--images folder {folder!r} holds no images.")
    return np.stack(images), np.asarray(labels), class_names


def load_demo_images(image_size, per_class=10):
    """scikit-learn's 8x8 digits, upscaled to RGB ``image_size`` images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "--images demo uses scikit-learn's bundled digits: "
            "pip install scikit-learn"
        ) from None
    digits = load_digits()
    keep = np.concatenate(
        [np.flatnonzero(digits.target == c)[:per_class] for c in range(10)]
    )
    small = digits.images[keep][..., None].astype("float32") * (255.0 / 16.0)
    images = keras.ops.convert_to_numpy(
        keras.ops.image.resize(small, (image_size, image_size))
    )
    images = np.repeat(np.clip(images, 0.0, 255.0), 3, axis=-1)
    return images, digits.target[keep], [str(c) for c in range(10)]


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m keras_senet.analysis",
        description="Record SE gate activations per class and plot them.",
    )
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument(
        "--weights",
        default="none",
        help="'imagenet', a .weights.h5 path, or 'none' (random)",
    )
    parser.add_argument(
        "--images", required=True, help="folder of class sub-folders, or 'demo'"
    )
    parser.add_argument(
        "--layers", default=None, help="comma-separated SE layer names (default: all)"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None, help="PNG file to write")
    parser.add_argument(
        "--npz", default=None, help="also save the per-class mean gates here"
    )
    args = parser.parse_args(argv)
    if args.out is None and args.npz is None:
        parser.error("give --out PNG and/or --npz FILE")
    if args.out is not None and not args.out.lower().endswith(".png"):
        parser.error(f"--out must name a .png file. Received: --out {args.out}")
    if args.npz is not None and not args.npz.lower().endswith(".npz"):
        parser.error(f"--npz must name a .npz file. Received: --npz {args.npz}")
    return args


def _save_npz(path, classes, means):
    with atomic_write(path) as temporary:
        np.savez(temporary, classes=classes, **means)


def main(argv=None):
    """The command line; user mistakes exit with code 2 and one line."""
    args = _parse(argv)
    try:
        return _run(args)
    except (ValueError, ImportError) as error:
        print(f"python -m keras_senet.analysis: error: {error}", file=sys.stderr)
        return 2


def _run(args):
    if args.out:
        _pyplot()  # Fail before the model runs, not after.
    from keras_senet.imagenet import preprocess_input
    from keras_senet.models import create_model

    if args.images == "demo":
        images, labels, class_names = load_demo_images(args.image_size)
    else:
        images, labels, class_names = load_image_folder(args.images, args.image_size)
    weights = None if args.weights.lower() == "none" else args.weights
    model = create_model(
        args.model,
        weights=weights,
        include_top=False,
        input_shape=(args.image_size, args.image_size, 3),
    )
    layer_names = args.layers.split(",") if args.layers else None
    gates = record_gates(
        model, preprocess_input(images), layer_names, batch_size=args.batch_size
    )
    classes, means = mean_gates_by_class(gates, labels)
    if args.npz:
        _save_npz(args.npz, np.asarray([class_names[c] for c in classes]), means)
        print(f"Saved per-class mean gates to {args.npz}")
    if args.out:
        plot_gates(
            means,
            classes,
            args.out,
            class_names=dict(enumerate(class_names)),
            title=f"{args.model}: mean SE gates per class",
        )
        print(f"Saved plot to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
