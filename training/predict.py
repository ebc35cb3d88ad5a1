"""Classify images with a trained model: ``python -m training.predict``.

::

    python -m training.predict cat.jpg dog.png --model-dir runs/finetune-se_resnet50

prints one line per image, its path and the ``--top-k`` most likely class
names (the run's ``classes.json``) with their probabilities::

    cat.jpg: cat 0.9731, dog 0.0214, fox 0.0055

The images go through the transform the run was validated with (the
shorter side resized, the centre crop at the run's image size, the model's
normalisation; see `training.evaluate.eval_transform`). A missing or
undecodable image, or a directory without a finished run, gets one line and
exit status 2.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_senet  # noqa: E402,F401  (registers the layers of model.keras)
from training import callbacks as cb  # noqa: E402
from training import cli  # noqa: E402
from training import transforms  # noqa: E402
from training.evaluate import eval_transform  # noqa: E402


def build_parser():
    p = cli.ArgumentParser(
        prog="python -m training.predict",
        description="Top-k class names and probabilities for images, from a "
        "finished training run.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (JPEG, PNG, BMP, GIF)")
    p.add_argument("--model-dir", required=True,
                   help="a finished run of python -m training.train")
    p.add_argument("--top-k", type=cli.positive_int, default=5,
                   help="how many classes to print per image")
    p.add_argument("--batch-size", type=cli.positive_int, default=32)
    return p


def load_run(model_dir):
    """``(model, class_names, transform)`` of the finished run in
    ``model_dir``."""
    model_path = os.path.join(model_dir, "model.keras")
    summary = cb.read_json(os.path.join(model_dir, "summary.json"))
    if summary is None or not os.path.isfile(model_path):
        raise ValueError(
            f"--model-dir {model_dir!r} holds no finished training run "
            "(model.keras and summary.json). Train one with: python -m "
            f"training.train --model-dir {model_dir}"
        )
    classes = cb.read_json(os.path.join(model_dir, "classes.json"), kind=list)
    if classes is None:
        classes = summary.get("classes")
    model = keras.saving.load_model(model_path, compile=False)
    outputs = model.output_shape[-1]
    if classes is None:
        classes = [str(i) for i in range(outputs)]
    if len(classes) != outputs:
        raise ValueError(
            f"{model_dir!r}: the model has {outputs} outputs but its class "
            f"list names {len(classes)} classes."
        )
    transform = eval_transform(summary.get("model"), weights=model_path)
    if summary.get("image_size"):
        transform = dataclasses.replace(
            transform, image_size=int(summary["image_size"])
        )
    return model, [str(c) for c in classes], transform


def load_image(path, transform):
    """One image through ``transform``, normalised: ``(S, S, 3)`` float32."""
    if not os.path.isfile(path):
        raise ValueError(f"No image file at {path!r}.")
    try:
        image = transforms.eval_image(
            tf.io.read_file(path),
            image_size=transform.image_size,
            crop_pct=transform.crop_pct,
            interpolation=transform.interpolation,
        )
    except tf.errors.OpError:
        raise ValueError(
            f"Cannot decode {path!r}: it is corrupt, truncated or not an "
            "image (JPEG, PNG, BMP, GIF)."
        ) from None
    image = transforms.normalize(image, transform.mean, transform.std)
    if transform.channel_order == "bgr":
        image = image[..., ::-1]
    return np.asarray(image, np.float32)


def predict(model, images, classes, top_k, batch_size=32):
    """``[[(class_name, probability), ...] per image]``, most likely first."""
    logits = model.predict(np.stack(images), batch_size=batch_size, verbose=0)
    probabilities = keras.ops.convert_to_numpy(
        keras.ops.softmax(keras.ops.cast(logits, "float32"), axis=-1)
    )
    k = min(top_k, len(classes))
    results = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:k]
        results.append([(classes[i], float(row[i])) for i in best])
    return results


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    with cli.user_errors(parser):
        model, classes, transform = load_run(args.model_dir)
        images = [load_image(path, transform) for path in args.images]
    results = predict(model, images, classes, args.top_k, args.batch_size)
    for path, top in zip(args.images, results):
        print(f"{path}: " + ", ".join(f"{name} {p:.4f}" for name, p in top),
              flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
