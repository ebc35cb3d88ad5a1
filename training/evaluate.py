"""Evaluate a model: ``python -m training.evaluate``.

Prints the top-1 and top-5 accuracy of a model on a dataset's validation
split, with the model's evaluation transform (resize the shorter side to
``image_size / crop_pct``, centre crop): the published weights' own
``crop_pct`` / ``interpolation`` / ``mean`` / ``std`` from
`keras_senet.zoo` when it has them, else 0.875 / bilinear / ImageNet
statistics. Examples::

    python -m training.evaluate --model se_resnet50 --weights imagenet \\
        --data imagenet2012
    python -m training.evaluate --model se_resnet18 --data demo \\
        --weights runs/demo-se_resnet18/model.weights.h5 --image-size 32

``--weights`` takes ``imagenet``, a ``.weights.h5`` / ``.pth`` file, or a
whole saved model (``.keras``, then ``--model`` may be omitted).
"""

import argparse
import dataclasses
import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_senet  # noqa: E402
from keras_senet import imagenet  # noqa: E402
from keras_senet.models import input_config  # noqa: E402
from training import data  # noqa: E402


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple = imagenet.IMAGENET_MEAN
    std: tuple = imagenet.IMAGENET_STD
    channel_order: str = "rgb"


def eval_transform(model_name, weights=None):
    """The evaluation transform of ``model_name``: its normalisation (see
    `keras_senet.models.input_config`), with the published weights' crop and
    interpolation for ``weights="imagenet"`` and the training pipeline's
    defaults (0.875, bilinear) for weights of one's own."""
    if model_name is None:
        return EvalTransform()
    config = input_config(model_name)
    published = weights == "imagenet"
    return EvalTransform(
        image_size=config["input_size"],
        crop_pct=config["crop_pct"] if published else 0.875,
        interpolation=config["interpolation"] if published else "bilinear",
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        channel_order=config["channel_order"],
    )


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Top-1 / top-5 accuracy of a model on a validation set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", help="model name (keras_senet.list_models())")
    p.add_argument(
        "--weights",
        required=True,
        help="'imagenet', a .weights.h5 / .pth file or a .keras model",
    )
    p.add_argument("--data", default="imagenet2012")
    p.add_argument("--data-dir", help="TFDS data_dir")
    p.add_argument("--split", default="validation")
    p.add_argument("--image-size", type=int)
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--interpolation")
    p.add_argument("--batch-size", type=int, default=64)
    return p


def load_model(model_name, weights, image_size, num_classes):
    """The model to evaluate (logits or probabilities: top-k is the same)."""
    if weights != "imagenet" and not os.path.isfile(weights):
        raise ValueError(
            f"--weights must be 'imagenet' or an existing file. No file at "
            f"weights={weights!r}"
        )
    if str(weights).endswith(".keras"):
        return keras.saving.load_model(weights, compile=False)
    if model_name is None:
        raise ValueError(
            "--model is required unless --weights is a .keras model. "
            "Received: model=None"
        )
    return keras_senet.create_model(
        model_name,
        weights=weights,
        input_shape=(image_size, image_size, 3),
        classes=num_classes,
        classifier_activation=None,
    )


def evaluate(model, dataset):
    """``{"top1", "top5"}`` of ``model`` on batches of ``(images, labels)``."""
    num_classes = model.output_shape[-1]
    # Keras needs a loss to evaluate; only the (activation-independent)
    # top-k metrics are reported.
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseTopKCategoricalAccuracy(k=1, name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(
                k=min(5, num_classes), name="top5"
            ),
        ]
    )
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    return {"top1": float(results["top1"]), "top5": float(results["top5"])}


def training_run_summary(weights):
    """The ``summary.json`` that `training.train` wrote beside ``weights``
    (a path), or an empty dict."""
    if weights in (None, "imagenet"):
        return {}
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def main(argv=None):
    args = build_parser().parse_args(argv)
    # The validation split is finite with an unknown length: Keras warns.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    # Weights from a training run: evaluate as that run did unless told.
    run = training_run_summary(args.weights)
    if args.model is None and run.get("model"):
        args.model = run["model"]
    if args.image_size is None and run.get("image_size"):
        args.image_size = int(run["image_size"])
    transform = eval_transform(args.model, args.weights)
    transform = dataclasses.replace(
        transform,
        **{
            k: v
            for k, v in dict(
                image_size=args.image_size,
                crop_pct=args.crop_pct,
                interpolation=args.interpolation,
            ).items()
            if v is not None
        },
    )
    info = data.describe(args.data, data_dir=args.data_dir)
    model = load_model(
        args.model, args.weights, transform.image_size, info.num_classes
    )
    if model.output_shape[-1] != info.num_classes:
        raise ValueError(
            f"The model has {model.output_shape[-1]} outputs but --data "
            f"{args.data!r} has {info.num_classes} classes."
        )
    dataset = data.build_dataset(
        args.data,
        args.split,
        image_size=transform.image_size,
        global_batch_size=args.batch_size,
        training=False,
        crop_pct=transform.crop_pct,
        interpolation=transform.interpolation,
        mean=transform.mean,
        std=transform.std,
        channel_order=transform.channel_order,
        data_dir=args.data_dir,
    )
    result = evaluate(model, dataset)
    print(
        f"[evaluate] {args.model or model.name} ({args.weights}) on "
        f"{args.data} {args.split} ({info.num_eval} images), "
        f"{transform.image_size} px, crop_pct {transform.crop_pct}, "
        f"{transform.interpolation}",
        flush=True,
    )
    print(
        f"top-1 {100 * result['top1']:.2f} %  top-5 {100 * result['top5']:.2f} %",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
