"""Training recipes (data) and the learning-rate schedule they define.

A recipe is a frozen dataclass: the optimiser, the schedule, the
regularisation and the augmentation of one published way to train an SE
network. ``python -m training.train --recipe NAME`` starts from one and
command-line flags override single fields (`get_recipe(name, **overrides)`).
`default_recipe` picks the one that fits the data: ``demo`` for the digits,
``paper`` for ImageNet-1k, ``finetune`` (a pretrained backbone, a new
classifier) for anything else, such as one's own image folder.

Learning rates are given per 256 images and scaled linearly with the global
batch (Goyal et al. 2017): ``lr = lr_per_256 * global_batch_size / 256``.

The schedule (`RecipeSchedule`), per optimiser step ``t`` with
``E = steps_per_epoch``, peak rate ``lr``, ``W = warmup_epochs * E`` steps of
warm-up and ``T = epochs * E`` steps in all:

- warm-up (``t < W``): ``lr * (t + 1) / W`` (linear, reaching ``lr`` at the
  last warm-up step);
- ``"step"``: ``lr * decay_factor ** floor(t / (decay_epochs * E))``;
- ``"cosine"``: ``lr * 0.5 * (1 + cos(pi * (t - W) / (T - W)))``;
- ``"constant"``: ``lr``.
"""

import dataclasses
import math

import keras
from keras import ops

SCHEDULES = ("step", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One way to train: optimiser, schedule, regularisation, augmentation.

    Attributes:
        name: the recipe's name.
        model: default model (``keras_senet.list_models()``).
        image_size: training and evaluation image side; None: the model's
            own (``keras_senet.models.input_config(model)["input_size"]``).
        batch_size: default GLOBAL batch size (all replicas together).
        epochs: length of training.
        lr_per_256: peak learning rate per 256 images (scaled linearly).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        schedule: ``"step"``, ``"cosine"`` or ``"constant"``.
        decay_epochs: ``"step"``: epochs between decays.
        decay_factor: ``"step"``: factor applied at each decay.
        warmup_epochs: linear warm-up length in epochs (may be fractional).
        weight_decay: L2 penalty coefficient on convolution and dense
            kernels (coupled, as in Caffe / PyTorch SGD: its gradient
            ``weight_decay * w`` joins the loss gradient). Biases and
            BatchNorm parameters are never decayed.
        label_smoothing: label smoothing of the cross-entropy.
        area_range: random-resized-crop area fraction range.
        aspect_ratio_range: random-resized-crop aspect ratio range.
        random_flip: random horizontal flips.
        weights: the initial weights of the backbone: None (random), or
            what `keras_senet.create_model` takes (``"imagenet"``, a file);
            the classifier is always new, sized to the data's classes.
        freeze_epochs: epochs at the start that train only the classifier
            (`keras_senet.freeze_backbone`: backbone and every BatchNorm
            frozen, BN in inference mode).
        description: where the recipe comes from.
    """

    name: str
    model: str
    image_size: int | None
    batch_size: int
    epochs: int
    lr_per_256: float
    momentum: float
    nesterov: bool = False
    schedule: str = "step"
    decay_epochs: int = 30
    decay_factor: float = 0.1
    warmup_epochs: float = 0.0
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    area_range: tuple = (0.08, 1.0)
    aspect_ratio_range: tuple = (3 / 4, 4 / 3)
    random_flip: bool = True
    weights: str | None = None
    freeze_epochs: int = 0
    description: str = ""

    def __post_init__(self):
        checks = {
            "image_size": self.image_size is None or _int(self.image_size) >= 32,
            "batch_size": _int(self.batch_size) >= 1,
            "epochs": _int(self.epochs) >= 1,
            "lr_per_256": _finite(self.lr_per_256) > 0,
            "momentum": 0 <= _finite(self.momentum) < 1,
            "schedule": self.schedule in SCHEDULES,
            "decay_epochs": _int(self.decay_epochs) >= 1,
            "decay_factor": 0 < _finite(self.decay_factor) <= 1,
            "warmup_epochs": 0 <= _finite(self.warmup_epochs) <= self.epochs,
            "weight_decay": _finite(self.weight_decay) >= 0,
            "label_smoothing": 0 <= _finite(self.label_smoothing) < 1,
            "freeze_epochs": 0 <= _int(self.freeze_epochs) <= self.epochs,
            "weights": self.weights is None or isinstance(self.weights, str),
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"Invalid recipe field `{field}` in recipe "
                    f"{self.name!r}. Received: {field}="
                    f"{getattr(self, field)!r}"
                )

    def learning_rate(self, global_batch_size):
        """The peak learning rate at ``global_batch_size`` (linear scaling)."""
        return self.lr_per_256 * global_batch_size / 256


def _finite(value):
    """``value`` if it is a finite number, else NaN (which fails every test)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _int(value):
    """``value`` if it is an integer, else NaN (which fails every test)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return math.nan
    return value


RECIPES = {
    "paper": Recipe(
        name="paper",
        model="se_resnet50",
        image_size=224,
        batch_size=1024,
        epochs=100,
        lr_per_256=0.15,  # 0.6 at batch 1024
        momentum=0.9,
        schedule="step",
        decay_epochs=30,
        decay_factor=0.1,
        weight_decay=1e-4,
        description="Hu et al. 2017: SGD 0.9, lr 0.6 at batch 1024, /10 "
        "every 30 epochs, 100 epochs, random-size crop 8-100 %.",
    ),
    "nvidia": Recipe(
        name="nvidia",
        model="se_resnext101_32x4d",
        image_size=224,
        batch_size=256,
        epochs=90,
        lr_per_256=0.256,
        momentum=0.875,
        schedule="cosine",
        warmup_epochs=8,
        weight_decay=6.103515625e-05,
        label_smoothing=0.1,
        description="NVIDIA DeepLearningExamples SE-ResNeXt-101: SGD "
        "0.875, lr 0.256 per 256, cosine, 8 warm-up epochs, label "
        "smoothing 0.1, wd 6.1e-5, 90 epochs.",
    ),
    "demo": Recipe(
        name="demo",
        model="se_resnet18",
        image_size=32,
        batch_size=64,
        epochs=8,
        lr_per_256=0.8,
        momentum=0.9,
        schedule="cosine",
        warmup_epochs=1,
        weight_decay=5e-5,
        label_smoothing=0.1,
        area_range=(0.6, 1.0),
        aspect_ratio_range=(0.8, 1.25),
        random_flip=False,  # digits are not mirror-symmetric
        description="The 8x8 scikit-learn digits at 32 px: a few minutes "
        "on 2 CPU cores.",
    ),
    "finetune": Recipe(
        name="finetune",
        model="se_resnet50",
        image_size=None,  # the model's own input size
        batch_size=32,
        epochs=10,
        lr_per_256=0.04,  # 0.005 at batch 32: a tenth of training from scratch
        momentum=0.9,
        schedule="cosine",
        warmup_epochs=1,
        weight_decay=1e-4,
        label_smoothing=0.1,
        weights="imagenet",
        description="Fine-tuning: the ImageNet-pretrained backbone with a "
        "new classifier for the data's classes, SGD 0.9, lr 0.04 per 256 "
        "images (a tenth of training from scratch), cosine, 1 warm-up epoch, "
        "10 epochs.",
    ),
}

IMAGENET_CLASSES = 1000


def default_recipe(data, num_classes):
    """The recipe that fits ``data`` with ``num_classes`` classes:
    ``"demo"`` for the digits, ``"paper"`` for ImageNet-1k, ``"finetune"``
    for anything else."""
    if data == "demo":
        return "demo"
    if num_classes == IMAGENET_CLASSES:
        return "paper"
    return "finetune"


def get_recipe(name, **overrides):
    """The recipe ``name`` with the given fields replaced (None: kept)."""
    if name not in RECIPES:
        raise ValueError(
            f"Unknown recipe. Expected one of {sorted(RECIPES)}. "
            f"Received: recipe={name!r}"
        )
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"Unknown recipe fields {unknown}. Expected some of "
            f"{sorted(fields)}."
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(RECIPES[name], **changes)


@keras.saving.register_keras_serializable(package="keras_senet")
class RecipeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Warm-up followed by step decay, cosine decay or a constant rate.

    See the module docstring for the formulas.

    Args:
        learning_rate: the peak learning rate (already scaled to the batch).
        steps_per_epoch: optimiser steps per epoch.
        epochs: total epochs (the cosine reaches 0 at their end).
        schedule: ``"step"``, ``"cosine"`` or ``"constant"``.
        warmup_epochs: linear warm-up length in epochs.
        decay_epochs, decay_factor: the step schedule's period and factor.
    """

    def __init__(
        self,
        learning_rate,
        steps_per_epoch,
        epochs,
        schedule="step",
        warmup_epochs=0.0,
        decay_epochs=30,
        decay_factor=0.1,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(
                f"`schedule` must be one of {SCHEDULES}. "
                f"Received: schedule={schedule!r}"
            )
        if int(steps_per_epoch) < 1:
            raise ValueError(
                "`steps_per_epoch` must be a positive integer. "
                f"Received: steps_per_epoch={steps_per_epoch!r}"
            )
        if not _finite(float(learning_rate)) > 0:
            raise ValueError(
                "`learning_rate` must be a finite number > 0. "
                f"Received: learning_rate={learning_rate!r}"
            )
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = epochs
        self.schedule = schedule
        self.warmup_epochs = float(warmup_epochs)
        self.decay_epochs = decay_epochs
        self.decay_factor = float(decay_factor)

    @property
    def warmup_steps(self):
        return int(round(self.warmup_epochs * self.steps_per_epoch))

    @property
    def total_steps(self):
        return int(self.epochs * self.steps_per_epoch)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.learning_rate
        if self.schedule == "step":
            period = float(self.decay_epochs * self.steps_per_epoch)
            lr = peak * ops.power(
                self.decay_factor, ops.floor(step / period)
            )
        elif self.schedule == "cosine":
            span = float(max(1, self.total_steps - self.warmup_steps))
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = 0.5 * peak * (1.0 + ops.cos(math.pi * progress))
        else:
            lr = ops.convert_to_tensor(peak, "float32")
        if self.warmup_steps > 0:
            warm = peak * (step + 1.0) / float(self.warmup_steps)
            lr = ops.where(step < self.warmup_steps, warm, lr)
        return lr

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "schedule": self.schedule,
            "warmup_epochs": self.warmup_epochs,
            "decay_epochs": self.decay_epochs,
            "decay_factor": self.decay_factor,
        }


def make_schedule(recipe, global_batch_size, steps_per_epoch, learning_rate=None):
    """The recipe's `RecipeSchedule` at ``global_batch_size``.

    ``learning_rate`` (absolute) replaces the linearly scaled peak rate.
    """
    if learning_rate is None:
        learning_rate = recipe.learning_rate(global_batch_size)
    return RecipeSchedule(
        learning_rate,
        steps_per_epoch=steps_per_epoch,
        epochs=recipe.epochs,
        schedule=recipe.schedule,
        warmup_epochs=recipe.warmup_epochs,
        decay_epochs=recipe.decay_epochs,
        decay_factor=recipe.decay_factor,
    )
