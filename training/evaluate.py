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

``--weights`` takes ``imagenet``, a tag or ``name.tag`` of published
weights (evaluated with that tag's own transform,
``keras_senet.models.input_config("name.tag")``), a ``.weights.h5`` /
``.pth`` file, or a whole saved model (``.keras``, then ``--model`` may be
omitted). Weights from a training run bring its ``summary.json``: the model,
image size, data and class names (data with other classes is refused: its
labels would not match). Mistakes get one line and exit status 2.
"""

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
from training import cli  # noqa: E402
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
    p = cli.ArgumentParser(
        prog="python -m training.evaluate",
        description="Top-1 / top-5 accuracy of a model on a validation set.",
    )
    p.add_argument(
        "--model",
        help="model name, or name.tag of published weights "
        "(keras_senet.list_models()); default: the training run's, for "
        "weights from one",
    )
    p.add_argument(
        "--weights",
        required=True,
        help="'imagenet', a tag or name.tag of published weights, a "
        ".weights.h5 / .pth file or a .keras model (a training run's "
        "model.weights.h5 brings its model, image size, data and classes)",
    )
    p.add_argument(
        "--data",
        help="'demo', a TFDS name, a TFRecord directory or an image-folder "
        "root (default: the training run's data, else imagenet2012)",
    )
    p.add_argument("--data-dir", help="TFDS data_dir")
    p.add_argument(
        "--split",
        default="validation",
        help="the split to evaluate: 'validation' (an image folder's val/ "
        "or validation/), 'train', or a TFDS split such as 'validation[:10%%]'",
    )
    p.add_argument("--image-size", type=cli.positive_int,
                   help="default: the run's, else the model's own")
    p.add_argument("--crop-pct", type=cli.positive_float,
                   help="centre-crop fraction (default: the weights' own)")
    p.add_argument("--interpolation",
                   help="resize method (default: the weights' own)")
    p.add_argument("--batch-size", type=cli.positive_int, default=64,
                   help="images per batch")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first image file that cannot be decoded, naming it "
        "(default: skip such files)",
    )
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
    if weights in (None, "imagenet") or not os.path.isfile(weights):
        return {}
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _names(names, limit=6):
    names = list(names)
    shown = ", ".join(map(str, names[:limit]))
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def check_classes(run, info, data_name):
    """Refuses data whose classes are not the ones the run trained on
    (their order is the label order: any difference mislabels)."""
    trained = run.get("classes")
    if not trained or info.class_names is None:
        return
    if list(map(str, info.class_names)) != list(map(str, trained)):
        raise ValueError(
            f"The model was trained on the classes {_names(trained)} but "
            f"--data {data_name!r} has {_names(info.class_names)}: its labels "
            "would not match the model's outputs. Evaluate on data with the "
            "same classes."
        )


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # The validation split is finite with an unknown length: Keras warns.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    with cli.user_errors(parser):
        model, dataset, info, transform = prepare(args)
    try:
        with cli.data_errors(cli.DataError):
            result = evaluate(model, dataset)
    except cli.DataError as e:  # --strict and an undecodable file
        parser.error(str(e))
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


def prepare(args):
    """Resolves the flags (from the training run's summary.json where the
    weights come from one), then builds the model and the dataset."""
    args.model, args.weights = cli.split_weights(
        args.model, args.weights, keras_senet.list_models()
    )
    # Weights from a training run: evaluate as that run did unless told.
    run = training_run_summary(args.weights)
    if args.model is None and run.get("model"):
        args.model = run["model"]
    if args.image_size is None and run.get("image_size"):
        args.image_size = int(run["image_size"])
    if args.data is None:
        args.data = run.get("data") or "imagenet2012"
    if args.model is None and not str(args.weights).endswith(".keras"):
        raise ValueError(
            f"--model is required with --weights {args.weights!r}: it is not "
            "a .keras model and no training run's summary.json lies beside "
            "it. Pass --model NAME (keras_senet.list_models())."
        )
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
    check_classes(run, info, args.data)
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
        strict=args.strict,
    )
    return model, dataset, info, transform


if __name__ == "__main__":
    main(sys.argv[1:])
