"""Train an SE network: ``python -m training.train``.

With no arguments this is the README's demo: SE-ResNet-18 at 32 px on the
8x8 digits that scikit-learn bundles, a few minutes on 2 CPU cores. The
recipe follows the data unless ``--recipe`` says otherwise: ``demo`` for the
digits, ``paper`` for ImageNet-1k, ``finetune`` for anything else (one's own
image folder: the ImageNet-pretrained backbone, a new classifier for the
folder's classes, the model's own image size). With ImageNet, for example
the paper's SE-ResNet-50 on 8 GPUs::

    python -m training.train --data imagenet2012 --recipe paper \\
        --model se_resnet50 --precision mixed_float16 --model-dir runs/r50

Several hosts: the same command on each, with ``TF_CONFIG`` describing the
cluster (``--strategy auto`` then picks `MultiWorkerMirroredStrategy`).
``--batch-size`` is always the GLOBAL batch; ``--lr`` is per 256 images and
scaled linearly to it (``--absolute-lr`` sets the rate used as is).

A killed job, restarted with the same command and ``--model-dir``, resumes
from its last checkpoint (every ``--save-every`` steps and every epoch end):
same step, weights, optimiser state and learning rate. SIGTERM (what
schedulers send before they kill a job) saves a checkpoint at the current
step and exits with status 143; the same command then resumes from it. A
resume with settings that change the result is refused, naming them. With
``--deterministic`` the input order is reproduced too, by skipping the
batches already trained on (this decodes them again: a cost at ImageNet
scale).

Only one training at a time may use a ``--model-dir`` (a lock, see
`training.rundir`). Only the chief writes the final files there:
``model.keras``, ``model.weights.h5``, ``classes.json`` (the class names in
label order), ``history.csv``, ``logs/`` (TensorBoard) and ``summary.json``;
it then removes the step checkpoints in ``backup/`` unless
``--keep-checkpoints``. Running a finished run again reports it and changes
nothing.

Nothing non-finite is ever written: a NaN or infinite loss or weight stops
the run (exit status 1, naming the step) and the last good checkpoints stay.
A file that cannot be written (a full disk) stops it the same way, with the
previous checkpoint intact. Mistakes in the command line (a missing
``--data``, an unknown model, a directory holding another run) get one line
and exit status 2.
"""

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_senet  # noqa: E402
from keras_senet import finetune  # noqa: E402
from keras_senet.models import input_config  # noqa: E402
from training import callbacks as cb  # noqa: E402
from training import cli  # noqa: E402
from training import data  # noqa: E402
from training import distribute  # noqa: E402
from training import recipes  # noqa: E402
from training import rundir  # noqa: E402
from training.rundir import check_resumable  # noqa: E402

def log(message):
    print(f"[train] {message}", flush=True)


def build_parser():
    p = cli.ArgumentParser(
        prog="python -m training.train",
        description="Train or fine-tune an SE network (defaults: the digits "
        "demo). User errors exit with status 2, a diverged run or a failed "
        "write with 1, a run stopped by SIGTERM with 143 (rerun to resume).",
        formatter_class=cli.HelpFormatter,
    )
    p.add_argument(
        "--recipe",
        choices=sorted(recipes.RECIPES),
        help="how to train (optimiser, schedule, augmentation, initial "
        "weights); default: the one that fits --data: demo for the digits, "
        "paper for ImageNet-1k, finetune for anything else",
    )
    p.add_argument(
        "--model",
        help="model name, or name.tag of published weights (default: the "
        "recipe's)",
    )
    p.add_argument(
        "--weights",
        help="initial weights of the backbone: 'imagenet', a tag or name.tag "
        "of published weights, a weights file, or 'none' (default: the "
        "recipe's: imagenet for finetune, none otherwise); the classifier is "
        "always new, one output per class of --data",
    )
    p.add_argument(
        "--freeze-epochs",
        type=cli.nonnegative_int,
        help="train only the classifier for the first N epochs: backbone "
        "frozen, BatchNorm in inference mode (default: the recipe's)",
    )
    p.add_argument(
        "--data",
        default="demo",
        help="'demo', a TFDS name (imagenet2012), a TFRecord directory or "
        "an image-folder root (<root>/train/<class>/..., <root>/val/...)",
    )
    p.add_argument("--data-dir", help="TFDS data_dir")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first image file that cannot be decoded, naming it "
        "(default: skip such files, count them and log their names)",
    )
    p.add_argument("--epochs", type=cli.positive_int,
                   help="length of training (default: the recipe's)")
    p.add_argument(
        "--steps-per-epoch",
        type=cli.positive_int,
        help="cap on the steps per epoch (default: a full pass over the "
        "training split)",
    )
    p.add_argument("--batch-size", type=cli.positive_int,
                   help="GLOBAL batch size (default: the recipe's)")
    p.add_argument(
        "--image-size",
        type=cli.positive_int,
        help="image side in pixels (default: the recipe's, else the model's "
        "own input size)",
    )
    p.add_argument(
        "--precision",
        default="float32",
        choices=distribute.PRECISIONS,
        help="float32, or mixed precision with float32 variables: float16 "
        "compute with loss scaling (GPUs), or bfloat16 (TPUs, recent GPUs)",
    )
    p.add_argument(
        "--strategy",
        default="auto",
        choices=distribute.STRATEGIES,
        help="tf.distribute strategy; auto: multi_worker when TF_CONFIG "
        "describes a cluster, mirrored with several GPUs, else one_device",
    )
    p.add_argument("--tpu", help="TPU name or address (--strategy tpu)")
    p.add_argument(
        "--model-dir",
        help="output and checkpoint directory (default: runs/<recipe>-<model>)",
    )
    lr = p.add_mutually_exclusive_group()
    lr.add_argument(
        "--lr",
        type=cli.positive_float,
        help="peak learning rate PER 256 IMAGES, scaled linearly to the "
        "global batch (default: the recipe's)",
    )
    lr.add_argument(
        "--absolute-lr",
        type=cli.positive_float,
        help="peak learning rate used as is (no batch scaling)",
    )
    p.add_argument("--schedule", choices=recipes.SCHEDULES,
                   help="learning-rate schedule (default: the recipe's)")
    p.add_argument("--warmup-epochs", type=cli.nonnegative_float,
                   help="linear warm-up, may be fractional (default: the "
                   "recipe's)")
    p.add_argument("--weight-decay", type=cli.nonnegative_float,
                   help="L2 on kernels only (default: the recipe's)")
    p.add_argument("--label-smoothing", type=cli.nonnegative_float,
                   help="default: the recipe's")
    p.add_argument("--momentum", type=cli.nonnegative_float,
                   help="SGD momentum (default: the recipe's)")
    xla = p.add_mutually_exclusive_group()
    xla.add_argument("--xla", dest="xla", action="store_true", default=None,
                     help="jit_compile the steps (default: on with GPUs)")
    xla.add_argument("--no-xla", dest="xla", action="store_false")
    p.add_argument("--sync-bn", action="store_true",
                   help="synchronised BatchNorm across replicas")
    p.add_argument("--seed", type=cli.nonnegative_int, help="random seed")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="reproducible run (seeded, deterministic ops and input order, "
        "exact resume); implies --seed 0 unless given",
    )
    p.add_argument("--save-every", type=cli.positive_int, default=500,
                   help="checkpoint every N steps (and every epoch end)")
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the step checkpoints in backup/ (weights and optimiser "
        "state) after the final model is written (default: remove them)",
    )
    p.add_argument("--eval-every", type=cli.positive_int, default=1,
                   help="validate every N epochs (and after the last)")
    p.add_argument("--steps-per-execution", type=cli.positive_int, default=1,
                   help="training steps per call into the compiled function")
    p.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        help="0 silent, 1 progress bar, 2 one line per epoch (default: 1 on "
        "a terminal, 2 when the output goes to a file or a pipe)",
    )
    return p


def resolve_recipe(args, info=None):
    """The recipe with the command line's overrides applied.

    Without ``--recipe`` the recipe that fits the data is used (see
    `recipes.default_recipe`; ``info`` is the data's `DatasetInfo`). Checks
    the model name, and gives the recipe the model's own image size where
    it has none.
    """
    name = args.recipe
    if name is None:
        name = recipes.default_recipe(
            args.data, info.num_classes if info is not None else None
        )
    recipe = recipes.get_recipe(
        name,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        lr_per_256=args.lr,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        momentum=args.momentum,
        freeze_epochs=args.freeze_epochs,
    )
    if args.weights is not None:
        model, weights = cli.split_weights(
            recipe.model, args.weights, keras_senet.list_models(),
            model_given=args.model is not None,
        )
        recipe = dataclasses.replace(recipe, model=model, weights=weights)
    convention = input_config(recipe.model)  # ValueError: unknown model
    if recipe.image_size is None:
        recipe = dataclasses.replace(recipe, image_size=convention["input_size"])
    if (
        recipe.weights not in (None, "imagenet")
        and cli.looks_like_path(recipe.weights)
        and not os.path.isfile(recipe.weights)
    ):
        raise ValueError(
            "--weights must be 'imagenet', a tag, 'none' or an existing "
            f"weights file. No file at weights={recipe.weights!r}"
        )
    return recipe


def _one_hot(num_classes):
    def fn(images, labels):
        return images, tf.one_hot(labels, num_classes, dtype=tf.float32)

    return fn


def make_datasets(args, recipe, runtime, num_classes, seed):
    """``(train_for(skip), validation)``.

    ``train_for(skip)`` is the distributed training stream (one pipeline per
    worker, `distribute_datasets_from_function`) without its first ``skip``
    per-replica batches; ``validation`` is a plain dataset of global batches.
    """
    strategy = runtime.strategy
    convention = input_config(recipe.model)
    common = dict(
        image_size=recipe.image_size,
        global_batch_size=runtime.global_batch_size,
        mean=convention["mean"],
        std=convention["std"],
        channel_order=convention["channel_order"],
        data_dir=args.data_dir,
        strict=args.strict,
    )

    def train_for(skip):
        def fn(input_context):
            ds = data.build_dataset(
                args.data,
                "train",
                input_context=input_context,
                area_range=tuple(recipe.area_range),
                aspect_ratio_range=tuple(recipe.aspect_ratio_range),
                random_flip=recipe.random_flip,
                deterministic=True if args.deterministic else None,
                shuffle_seed=seed,
                **common,
            )
            if skip:
                ds = ds.skip(skip)
            return ds.map(_one_hot(num_classes))

        return strategy.distribute_datasets_from_function(fn)

    # Keras splits each global validation batch over the replicas (and
    # shards the examples over workers). Per-pipeline sharding could leave
    # a replica an empty final batch, which the models cannot take.
    validation = data.build_dataset(args.data, "validation", **common)
    return train_for, validation.map(_one_hot(num_classes))


def create_network(recipe, num_classes):
    """The model of ``recipe`` with ``num_classes`` logits; with
    ``recipe.weights`` its backbone comes from them and its classifier is
    new. Returns ``(model, message)``."""
    input_shape = (recipe.image_size, recipe.image_size, 3)
    model = keras_senet.create_model(
        recipe.model,
        input_shape=input_shape,
        classes=num_classes,
        classifier_activation=None,
    )
    if recipe.weights is None:
        return model, "random initial weights"
    backbone = keras_senet.create_model(
        recipe.model,
        weights=recipe.weights,
        include_top=False,
        input_shape=input_shape,
    )
    loaded = 0
    for layer in backbone.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            loaded += 1
    return model, (
        f"backbone ({loaded} layers) from weights {recipe.weights!r}, new "
        f"classifier for {num_classes} classes"
    )


def build_model(args, recipe, runtime, num_classes, schedule):
    """Builds and compiles the model in the strategy's scope.

    Returns ``(model, compile_model, message)``: ``compile_model()``
    compiles it again with the same optimiser (after (un)freezing layers).
    The optimiser is built over every trainable variable of the whole
    model, so its state (and the checkpoints) keep one layout whether the
    backbone is frozen or not.
    """
    with runtime.strategy.scope():
        model, message = create_network(recipe, num_classes)
        if args.sync_bn:
            model = distribute.synchronize_batch_norm(model)
    # The same layers and variables in a model object made outside the
    # scope: Keras then takes the strategy from the scope around `fit` and
    # skips drawing a first batch to build the model, which fails under
    # MultiWorkerMirroredStrategy (keras-team/keras#20585).
    wrapper = (
        distribute.MultiWorkerModel if runtime.num_workers > 1 else keras.Model
    )
    model = wrapper(model.input, model.output, name=model.name)
    with runtime.strategy.scope():
        distribute.apply_weight_decay(model, recipe.weight_decay)
        optimizer = keras.optimizers.SGD(
            learning_rate=schedule,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
        )
        optimizer = distribute.wrap_optimizer(optimizer, args.precision)

    def compile_model():
        with runtime.strategy.scope():
            top_k = min(5, num_classes)
            model.compile(
                optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(
                    from_logits=True, label_smoothing=recipe.label_smoothing
                ),
                metrics=[
                    keras.metrics.CategoricalAccuracy(name="top1"),
                    keras.metrics.TopKCategoricalAccuracy(k=top_k, name="top5"),
                ],
                jit_compile=args.xla,
                steps_per_execution=args.steps_per_execution,
            )

    compile_model()
    with runtime.strategy.scope():
        model.optimizer.build(model.trainable_variables)
    return model, compile_model, message


def agree_on_step(strategy, step):
    """Checks that every worker resumes from the same step."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return step
    # All equal iff n * sum(s^2) == sum(s)^2 (Cauchy-Schwarz); every worker
    # computes the same sums, so all decide alike.
    value = tf.constant([step, step * step], tf.float64)
    total = strategy.reduce(
        "SUM", strategy.run(lambda: tf.identity(value)), axis=None
    ).numpy()
    n = strategy.num_replicas_in_sync
    if abs(n * total[1] - total[0] ** 2) > 0.5:
        raise RuntimeError(
            f"Workers found different checkpoints (this one: step {step}): "
            "--model-dir must be on storage that all workers share."
        )
    return step


def fit(model, train_for, validation, *, start_step, steps_per_epoch, epochs,
        callbacks, eval_every, verbose, freeze_epochs=0, set_frozen=None):
    """Trains from ``start_step`` to ``epochs * steps_per_epoch``.

    A run resumed mid-epoch first finishes that epoch (its remaining steps),
    then continues epoch by epoch. With ``freeze_epochs``, the epochs before
    it run with ``set_frozen(True)`` and the rest with ``set_frozen(False)``
    (each a separate ``fit`` call, as the model is recompiled between).
    Returns the last epoch's logs.
    """
    val_epochs = [
        e for e in range(1, epochs + 1) if e % eval_every == 0 or e == epochs
    ]
    epoch, offset = divmod(start_step, steps_per_epoch)
    logs = {}
    while epoch < epochs:
        if offset:
            end = epoch + 1
        elif epoch < freeze_epochs:
            end = min(freeze_epochs, epochs)
        else:
            end = epochs
        if set_frozen is not None:
            set_frozen(epoch < freeze_epochs)
        history = model.fit(
            train_for(epoch * steps_per_epoch + offset),
            initial_epoch=epoch,
            epochs=end,
            steps_per_epoch=steps_per_epoch - offset,
            validation_data=validation,
            validation_freq=val_epochs,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )
        logs = {k: v[-1] for k, v in history.history.items()}
        epoch, offset = end, 0
    return logs


def _freezer(model, compile_model):
    """``set_frozen(bool)``: freezes or unfreezes the backbone (every layer
    but the classifier, BatchNorm in inference mode) and recompiles when
    that changes."""
    state = {"frozen": False}

    def set_frozen(frozen):
        if frozen == state["frozen"]:
            return
        if frozen:
            keras_senet.freeze_backbone(model)
        else:
            finetune.unfreeze(model)
        compile_model()
        state["frozen"] = frozen
        log(("backbone frozen: training the classifier only" if frozen
             else "backbone unfrozen: training the whole model"))

    return set_frozen


@dataclasses.dataclass
class Job:
    """A training set up by `prepare`, holding its directory's lock.

    Use it as a context manager: the lock is released when the ``with``
    ends. ``stop_signal`` is the `training.callbacks.StopSignal` that the
    checkpointer honours. ``finished`` is the summary of a run that is
    already complete.
    """

    args: argparse.Namespace
    recipe: recipes.Recipe
    runtime: distribute.Runtime
    info: data.DatasetInfo
    data_name: str
    steps_per_epoch: int
    total_steps: int
    model_dir: str
    write_dir: str
    lock: rundir.RunDirLock | None
    stop_signal: cb.StopSignal
    model: keras.Model | None = None
    compile_model: object = None
    start_step: int = 0
    finished: dict | None = None

    @property
    def backup_dir(self):
        return os.path.join(self.model_dir, "backup")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
        return False


def _setup_runtime(args):
    """The strategy, seeds and determinism, in the order TensorFlow needs."""
    # First: a multi-worker strategy must be created before TensorFlow
    # initialises (seeds and determinism settings initialise it).
    strategy = distribute.create_strategy(args.strategy, tpu=args.tpu)
    # Validation data is finite with an unknown length; Keras warns when it
    # ends. (A training set that ran out is caught below.)
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    if args.deterministic and args.seed is None:
        args.seed = 0
    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    if args.xla is None:
        args.xla = bool(tf.config.list_logical_devices("GPU"))
    if args.verbose is None:
        args.verbose = 1 if sys.stdout.isatty() else 2
    return strategy


def prepare(args, stop_signal=None):
    """Checks the command line and the data, locks the run directory,
    builds the model and restores the last checkpoint: a `Job`.

    ``stop_signal``: the active `training.callbacks.StopSignal` (SIGTERM
    received from now on stops the run cleanly at its next step).

    Every mistake in the command line raises a ValueError (an ImportError
    for a missing optional dependency) before anything is written; a
    directory this call created is removed again if it fails.
    """
    strategy = _setup_runtime(args)
    info = data.describe(args.data, data_dir=args.data_dir)
    recipe = resolve_recipe(args, info)
    # The dtype policy must be set before any layer is built.
    distribute.set_precision(args.precision)
    runtime = distribute.make_runtime(strategy, recipe.batch_size)

    if info.num_train is None and args.steps_per_epoch is None:
        raise ValueError(
            f"The size of --data {args.data!r} is unknown: pass "
            "--steps-per-epoch."
        )
    steps_per_epoch = (
        info.num_train // runtime.global_batch_size
        if info.num_train is not None
        else args.steps_per_epoch
    )
    if args.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, args.steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch-size {runtime.global_batch_size} is larger than the "
            f"{info.num_train} training examples of --data {args.data!r}."
        )
    data_name = os.path.abspath(args.data) if os.path.isdir(args.data) else args.data
    model_dir = args.model_dir or os.path.join(
        "runs", f"{recipe.name}-{recipe.model}"
    )
    created = runtime.is_chief and not os.path.isdir(model_dir)
    lock = None
    if runtime.is_chief:
        try:
            os.makedirs(model_dir, exist_ok=True)
        except OSError as e:
            raise ValueError(
                f"Cannot create --model-dir {model_dir!r}: "
                f"{e.strerror or e}."
            ) from None
        lock = rundir.RunDirLock(model_dir)
    try:
        if lock is not None:
            lock.acquire()
        job = Job(
            args=args, recipe=recipe, runtime=runtime, info=info,
            data_name=data_name, steps_per_epoch=steps_per_epoch,
            total_steps=steps_per_epoch * recipe.epochs, model_dir=model_dir,
            # Non-chief workers write to a private directory that is removed
            # at the end; every worker restores from the chief's checkpoints.
            write_dir=model_dir if runtime.is_chief else tempfile.mkdtemp(
                prefix=f"worker-{runtime.task_id}-"
            ),
            lock=lock, stop_signal=stop_signal or cb.StopSignal(),
        )
        _load_or_finish(job)
    except BaseException:
        if lock is not None:
            lock.release()
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(model_dir)  # only if nothing else is in it
        raise
    return job


def _schedule(job):
    return recipes.make_schedule(
        job.recipe,
        job.runtime.global_batch_size,
        job.steps_per_epoch,
        learning_rate=job.args.absolute_lr,
    )


def run_info(job):
    """What run.json records: the settings that define the run."""
    return {
        "model": job.recipe.model,
        "data": job.data_name,
        "classes": list(job.info.class_names) if job.info.class_names else None,
        "global_batch_size": job.runtime.global_batch_size,
        "steps_per_epoch": job.steps_per_epoch,
        "epochs": job.recipe.epochs,
        "learning_rate": _schedule(job).learning_rate,
        "recipe": dataclasses.asdict(job.recipe),
        "precision": job.args.precision,
        "sync_bn": job.args.sync_bn,
        "seed": job.args.seed,
        "deterministic": job.args.deterministic,
    }


def _load_or_finish(job):
    """Checks the settings against a run in the directory, then either
    notes that it is finished or builds the model and restores it."""
    args, recipe, runtime = job.args, job.recipe, job.runtime
    run_file = os.path.join(job.model_dir, "run.json")
    summary_file = os.path.join(job.model_dir, "summary.json")
    settings = run_info(job)
    previous_summary = cb.read_json(summary_file)
    if previous_summary is not None or cb.list_checkpoints(job.backup_dir):
        check_resumable(run_file, settings)
    if previous_summary is not None and previous_summary.get("steps") == job.total_steps:
        job.finished = previous_summary
        return

    schedule = _schedule(job)
    job.model, job.compile_model, weights_message = build_model(
        args, recipe, runtime, job.info.num_classes, schedule
    )
    with runtime.strategy.scope():
        start_step = cb.restore_latest(job.model, job.backup_dir)
    job.start_step = agree_on_step(
        runtime.strategy, min(start_step, job.total_steps)
    )
    if runtime.is_chief:
        cb.write_json(settings, run_file)

    log(f"recipe {recipe.name}: {recipe.description}"
        + ("" if args.recipe else f" (chosen for --data {args.data}; "
           "--recipe to change)"))
    log(f"model {recipe.model} at {recipe.image_size} px, data {args.data} "
        f"({job.info.num_classes} classes, {job.info.num_train} train / "
        f"{job.info.num_eval} validation images)")
    log(f"initial weights: {weights_message}"
        + (f"; classifier only for the first {recipe.freeze_epochs} epoch(s)"
           if recipe.freeze_epochs else ""))
    log(runtime.describe())
    log(f"precision {args.precision}, XLA {'on' if args.xla else 'off'}, "
        f"sync BN {'on' if args.sync_bn else 'off'}")
    log(f"{recipe.epochs} epochs x {job.steps_per_epoch} steps = "
        f"{job.total_steps} steps; peak lr {schedule.learning_rate:g} "
        f"({recipe.schedule}, {recipe.warmup_epochs:g} warm-up epochs), "
        f"momentum {recipe.momentum}, weight decay {recipe.weight_decay:g} "
        f"(kernels only), label smoothing {recipe.label_smoothing:g}")
    if job.start_step:
        log(f"resuming from step {job.start_step} of {job.total_steps} "
            f"(checkpoint in {job.backup_dir})")


def final_line(summary):
    """The last line a run prints (also for a finished run run again)."""

    def pct(key):
        value = summary.get(key)
        return "n/a" if value is None else f"{100 * value:.2f} %"

    return (
        f"Final validation accuracy: top-1 {pct('val_top1')}, top-5 "
        f"{pct('val_top5')} ({summary.get('model')} on {summary.get('data')}, "
        f"{summary.get('steps')} steps, {summary.get('train_time_s') or 0:.0f} s)"
    )


def train(job):
    """Trains a prepared `Job`, evaluates, writes the outputs; returns
    ``(model, summary)`` (``model`` is None for a run finished before)."""
    args, recipe, runtime = job.args, job.recipe, job.runtime
    strategy, model = runtime.strategy, job.model
    if job.finished is not None:
        log(f"training already finished in {job.model_dir}; nothing to do "
            "(delete it or use another --model-dir to train again)")
        print(final_line(job.finished), flush=True)
        return None, job.finished

    train_for, validation = make_datasets(
        args, recipe, runtime, job.info.num_classes, args.seed
    )
    checkpoint = cb.StepCheckpoint(
        job.backup_dir if runtime.is_chief
        else os.path.join(job.write_dir, "backup"),
        save_freq=args.save_every,
        initial_step=job.start_step,
        stop_signal=job.stop_signal,
        total_steps=job.total_steps,
    )
    callbacks = [checkpoint, cb.LearningRateLogger()]
    if hasattr(data, "CorruptFileLogger"):
        callbacks.append(data.CorruptFileLogger())
    callbacks += [
        keras.callbacks.CSVLogger(
            os.path.join(job.write_dir, "history.csv"), append=True
        ),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(
            keras.callbacks.TensorBoard(
                os.path.join(job.write_dir, "logs"), write_graph=False
            )
        )
    else:
        log("TensorBoard is not installed: no logs/ (pip install tensorboard)")

    started = time.time()
    logs = {}
    checkpoint.check_stop()
    with cli.data_errors(cb.TrainingStopped):
        if job.start_step < job.total_steps:
            with strategy.scope():
                logs = fit(
                    model,
                    train_for,
                    validation,
                    start_step=job.start_step,
                    steps_per_epoch=job.steps_per_epoch,
                    epochs=recipe.epochs,
                    callbacks=callbacks,
                    eval_every=args.eval_every,
                    verbose=args.verbose,
                    freeze_epochs=recipe.freeze_epochs,
                    set_frozen=_freezer(model, job.compile_model),
                )
        train_time = time.time() - started
        if checkpoint.step != job.total_steps:
            raise cb.TrainingStopped(
                f"Training stopped at step {checkpoint.step} of "
                f"{job.total_steps}: the training data of --data "
                f"{args.data!r} ran out."
            )
        if "val_top1" not in logs or runtime.num_workers > 1:
            # Across workers each one evaluates the whole validation set
            # itself, outside the strategy (no collectives; all get the same).
            scope = (
                strategy.scope()
                if runtime.num_workers == 1
                else contextlib.nullcontext()
            )
            with scope:
                results = model.evaluate(
                    validation, verbose=0, return_dict=True,
                    callbacks=[checkpoint],
                )
            logs = {f"val_{k}": v for k, v in results.items()}

    summary = {
        "model": recipe.model,
        "recipe": recipe.name,
        "data": job.data_name,
        "classes": list(job.info.class_names) if job.info.class_names else None,
        "weights": recipe.weights,
        "image_size": recipe.image_size,
        "precision": args.precision,
        "strategy": type(strategy).__name__,
        "num_replicas": runtime.num_replicas,
        "num_workers": runtime.num_workers,
        "global_batch_size": runtime.global_batch_size,
        "per_replica_batch_size": runtime.per_replica_batch_size,
        "epochs": recipe.epochs,
        "steps_per_epoch": job.steps_per_epoch,
        "steps": checkpoint.step,
        "resumed_from_step": job.start_step,
        "train_time_s": round(train_time, 2),
        "train_images_per_s": round(
            (checkpoint.step - job.start_step)
            * runtime.global_batch_size
            / max(train_time, 1e-9),
            1,
        ),
        "val_top1": float(logs["val_top1"]),
        "val_top5": float(logs["val_top5"]),
        "val_loss": float(logs["val_loss"]),
        "weights_sha256": weights_checksum(model.weights),
        "trainable_weights_sha256": weights_checksum(model.trainable_weights),
    }
    finetune.unfreeze(model)  # the saved model is not frozen
    save_outputs(model, summary, job.write_dir, step=checkpoint.step)
    if not runtime.is_chief:
        shutil.rmtree(job.write_dir, ignore_errors=True)
    elif not args.keep_checkpoints:
        size = rundir.tree_size(job.backup_dir)
        shutil.rmtree(job.backup_dir, ignore_errors=True)
        log(f"removed the step checkpoints in backup/ ({size / 2**20:.0f} "
            "MB; --keep-checkpoints keeps them)")
    log(f"weights checksum {summary['weights_sha256']}")
    log(f"wrote model.keras, model.weights.h5, classes.json, summary.json "
        f"to {job.model_dir}")
    print(final_line(summary), flush=True)
    return model, summary


def run(argv=None):
    """Parses ``argv``, trains and evaluates; returns ``(model, summary)``.

    Errors propagate as exceptions (ValueError for mistakes in ``argv``,
    `training.callbacks.TrainingStopped` for a stopped run); `main` turns
    them into messages and exit codes.
    """
    args = build_parser().parse_args(argv)
    with cb.StopSignal() as stop_signal:
        with prepare(args, stop_signal) as job:
            return train(job)


def main(argv=None):
    """Command-line entry point; returns the run's summary.

    Exit codes: 2 for a mistake in the command line (one line, no
    traceback), 1 for a run that diverged, could not write its files or was
    stopped by its data, 143 for a run stopped by SIGTERM (checkpoint saved:
    run the same command again to resume).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    with cb.StopSignal() as stop_signal:
        with cli.user_errors(parser):
            job = prepare(args, stop_signal)
        try:
            with job:
                return train(job)[1]
        except cb.TrainingStopped as e:
            print(f"[train] {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)


def weights_checksum(weights):
    """SHA-256 of the values of ``weights`` (replicas in sync agree)."""
    digest = hashlib.sha256()
    for weight in weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()


def save_outputs(model, summary, directory, step=None):
    """Writes the final model, weights, class names and summary atomically.

    The files hold a plain, uncompiled functional model with the trained
    layers (no optimiser state: the checkpoints in backup/ keep that).
    Non-finite weights are refused (`Diverged`) before anything is written.
    """
    bad = cb.first_non_finite(model)
    if bad is not None:
        raise cb.Diverged(
            f"The final weights are not finite (NaN or infinite, first in "
            f"{bad}) after step {step}: no model was written. Lower the "
            "learning rate (--lr / --absolute-lr) and train into a new "
            "--model-dir."
        )
    model = keras.Model(model.input, model.output, name=model.name)
    try:
        cb.replace_atomically(
            lambda p: model.save(p, overwrite=True),
            os.path.join(directory, "model.keras"),
        )
        cb.replace_atomically(
            lambda p: model.save_weights(p, overwrite=True),
            os.path.join(directory, "model.weights.h5"),
        )
        if summary.get("classes") is not None:
            cb.write_json(
                summary["classes"], os.path.join(directory, "classes.json")
            )
        cb.write_json(summary, os.path.join(directory, "summary.json"))
    except cb.OutputError as e:
        raise cb.OutputError(
            f"{e} The checkpoints in backup/ are kept: make room (or fix the "
            "directory) and run the same command again to write the final "
            "files."
        ) from None


if __name__ == "__main__":
    main(sys.argv[1:])
