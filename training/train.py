"""Train an SE network: ``python -m training.train``.

With no arguments this is the README's demo: SE-ResNet-18 at 32 px on the
8x8 digits that scikit-learn bundles, a few minutes on 2 CPU cores. With
ImageNet, for example the paper's SE-ResNet-50 on 8 GPUs::

    python -m training.train --data imagenet2012 --recipe paper \\
        --model se_resnet50 --precision mixed_float16 --model-dir runs/r50

Several hosts: the same command on each, with ``TF_CONFIG`` describing the
cluster (``--strategy auto`` then picks `MultiWorkerMirroredStrategy`).
``--batch-size`` is always the GLOBAL batch; ``--lr`` is per 256 images and
scaled linearly to it (``--absolute-lr`` sets the rate used as is).

A killed job, restarted with the same command and ``--model-dir``, resumes
from its last checkpoint (every ``--save-every`` steps and every epoch end):
same step, weights, optimiser state and learning rate. With
``--deterministic`` the input order is reproduced too, by skipping the
batches already trained on (this decodes them again: a cost at ImageNet
scale). Only the chief writes the final files to ``--model-dir``:
``model.keras``, ``model.weights.h5``, ``history.csv``, ``logs/``
(TensorBoard) and ``summary.json``.
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
from keras_senet.models import input_config  # noqa: E402
from training import callbacks as cb  # noqa: E402
from training import data  # noqa: E402
from training import distribute  # noqa: E402
from training import recipes  # noqa: E402

# Fields of a run that must not change when it resumes.
RESUME_KEYS = ("model", "data", "global_batch_size", "steps_per_epoch", "epochs")


def log(message):
    print(f"[train] {message}", flush=True)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train an SE network (defaults: the digits demo).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--recipe", default="demo", choices=sorted(recipes.RECIPES))
    p.add_argument("--model", help="model name (default: the recipe's)")
    p.add_argument(
        "--data",
        default="demo",
        help="'demo', a TFDS name (imagenet2012), a TFRecord directory or "
        "an image-folder root",
    )
    p.add_argument("--data-dir", help="TFDS data_dir")
    p.add_argument("--epochs", type=int, help="default: the recipe's")
    p.add_argument(
        "--steps-per-epoch",
        type=int,
        help="cap on the steps per epoch (default: a full pass over the "
        "training split)",
    )
    p.add_argument("--batch-size", type=int, help="GLOBAL batch size")
    p.add_argument("--image-size", type=int, help="default: the recipe's")
    p.add_argument(
        "--precision", default="float32", choices=distribute.PRECISIONS
    )
    p.add_argument(
        "--strategy", default="auto", choices=distribute.STRATEGIES
    )
    p.add_argument("--tpu", help="TPU name or address (--strategy tpu)")
    p.add_argument(
        "--model-dir",
        help="output and checkpoint directory (default: runs/<recipe>-<model>)",
    )
    lr = p.add_mutually_exclusive_group()
    lr.add_argument(
        "--lr",
        type=float,
        help="peak learning rate PER 256 IMAGES, scaled linearly to the "
        "global batch",
    )
    lr.add_argument(
        "--absolute-lr",
        type=float,
        help="peak learning rate used as is (no batch scaling)",
    )
    p.add_argument("--schedule", choices=recipes.SCHEDULES)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--momentum", type=float)
    xla = p.add_mutually_exclusive_group()
    xla.add_argument("--xla", dest="xla", action="store_true", default=None,
                     help="jit_compile the steps (default: on with GPUs)")
    xla.add_argument("--no-xla", dest="xla", action="store_false")
    p.add_argument("--sync-bn", action="store_true",
                   help="synchronised BatchNorm across replicas")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="reproducible run (seeded, deterministic ops and input order, "
        "exact resume); implies --seed 0 unless given",
    )
    p.add_argument("--save-every", type=int, default=500,
                   help="checkpoint every N steps (and every epoch end)")
    p.add_argument("--eval-every", type=int, default=1,
                   help="validate every N epochs (and after the last)")
    p.add_argument("--steps-per-execution", type=int, default=1)
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="0 silent, 1 progress bar, 2 one line per epoch")
    return p


def resolve_recipe(args):
    """The recipe with the command line's overrides applied."""
    return recipes.get_recipe(
        args.recipe,
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
    )


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


def build_model(args, recipe, runtime, num_classes, schedule):
    """Builds and compiles the model in the strategy's scope."""
    with runtime.strategy.scope():
        model = keras_senet.create_model(
            recipe.model,
            input_shape=(recipe.image_size, recipe.image_size, 3),
            classes=num_classes,
            classifier_activation=None,
        )
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
        model.optimizer.build(model.trainable_variables)
    return model


def check_resumable(run_file, run_info):
    """Refuses to resume a run whose shape (batch, steps, ...) changed."""
    import json

    if not os.path.exists(run_file):
        return
    try:
        with open(run_file, encoding="utf-8") as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return
    changed = {
        k: (previous.get(k), run_info[k])
        for k in RESUME_KEYS
        if k in previous and previous.get(k) != run_info[k]
    }
    if changed:
        raise ValueError(
            f"--model-dir {os.path.dirname(run_file)!r} holds a run with "
            f"other settings, so it cannot resume: {changed} (previous, "
            "now). Use another --model-dir or the same settings."
        )


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
        callbacks, eval_every, verbose):
    """Trains from ``start_step`` to ``epochs * steps_per_epoch``.

    A run resumed mid-epoch first finishes that epoch (its remaining steps),
    then continues epoch by epoch. Returns the last epoch's logs.
    """
    val_epochs = [
        e for e in range(1, epochs + 1) if e % eval_every == 0 or e == epochs
    ]
    epoch, offset = divmod(start_step, steps_per_epoch)
    logs = {}
    kwargs = dict(
        validation_data=validation,
        validation_freq=val_epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,
    )
    if offset:
        history = model.fit(
            train_for(start_step),
            initial_epoch=epoch,
            epochs=epoch + 1,
            steps_per_epoch=steps_per_epoch - offset,
            **kwargs,
        )
        logs = {k: v[-1] for k, v in history.history.items()}
        epoch += 1
    if epoch < epochs:
        history = model.fit(
            train_for(epoch * steps_per_epoch),
            initial_epoch=epoch,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            **kwargs,
        )
        logs = {k: v[-1] for k, v in history.history.items()}
    return logs


def run(argv=None):
    """Parses ``argv``, trains and evaluates; returns (model, summary)."""
    args = build_parser().parse_args(argv)
    recipe = resolve_recipe(args)
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
    # The dtype policy must be set before any layer is built.
    distribute.set_precision(args.precision)
    runtime = distribute.make_runtime(strategy, recipe.batch_size)

    info = data.describe(args.data, data_dir=args.data_dir)
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
    total_steps = steps_per_epoch * recipe.epochs

    model_dir = args.model_dir or os.path.join(
        "runs", f"{recipe.name}-{recipe.model}"
    )
    os.makedirs(model_dir, exist_ok=True)
    # Non-chief workers write to a private directory that is removed at
    # the end; every worker restores from the chief's checkpoints.
    write_dir = (
        model_dir
        if runtime.is_chief
        else tempfile.mkdtemp(prefix=f"worker-{runtime.task_id}-")
    )
    backup_dir = os.path.join(model_dir, "backup")

    log(f"recipe {recipe.name}: {recipe.description}")
    log(f"model {recipe.model} at {recipe.image_size} px, data {args.data} "
        f"({info.num_classes} classes, {info.num_train} train / "
        f"{info.num_eval} validation images)")
    log(runtime.describe())
    log(f"precision {args.precision}, XLA {'on' if args.xla else 'off'}, "
        f"sync BN {'on' if args.sync_bn else 'off'}")

    schedule = recipes.make_schedule(
        recipe,
        runtime.global_batch_size,
        steps_per_epoch,
        learning_rate=args.absolute_lr,
    )
    log(f"{recipe.epochs} epochs x {steps_per_epoch} steps = {total_steps} "
        f"steps; peak lr {schedule.learning_rate:g} ({recipe.schedule}, "
        f"{recipe.warmup_epochs:g} warm-up epochs), momentum "
        f"{recipe.momentum}, weight decay {recipe.weight_decay:g} (kernels "
        f"only), label smoothing {recipe.label_smoothing:g}")

    model = build_model(args, recipe, runtime, info.num_classes, schedule)
    run_info = {
        "model": recipe.model,
        "data": args.data,
        "global_batch_size": runtime.global_batch_size,
        "steps_per_epoch": steps_per_epoch,
        "epochs": recipe.epochs,
        "recipe": dataclasses.asdict(recipe),
        "precision": args.precision,
    }
    run_file = os.path.join(model_dir, "run.json")
    check_resumable(run_file, run_info)
    with strategy.scope():
        start_step = cb.restore_latest(model, backup_dir)
    start_step = agree_on_step(strategy, min(start_step, total_steps))
    if runtime.is_chief:
        cb.write_json(run_info, run_file)
    if start_step:
        log(f"resuming from step {start_step} of {total_steps} "
            f"(checkpoint in {backup_dir})")
    if start_step >= total_steps:
        log(f"training already finished in {model_dir}; evaluating (use "
            "another --model-dir to train again)")

    train_for, validation = make_datasets(
        args, recipe, runtime, info.num_classes, args.seed
    )
    checkpoint = cb.StepCheckpoint(
        backup_dir if runtime.is_chief else os.path.join(write_dir, "backup"),
        save_freq=args.save_every,
        initial_step=start_step,
    )
    callbacks = [checkpoint, cb.LearningRateLogger()]
    if hasattr(data, "CorruptFileLogger"):
        callbacks.append(data.CorruptFileLogger())
    callbacks += [
        keras.callbacks.CSVLogger(
            os.path.join(write_dir, "history.csv"), append=True
        ),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(
            keras.callbacks.TensorBoard(
                os.path.join(write_dir, "logs"), write_graph=False
            )
        )
    else:
        log("TensorBoard is not installed: no logs/ (pip install tensorboard)")

    started = time.time()
    logs = {}
    if start_step < total_steps:
        with strategy.scope():
            logs = fit(
                model,
                train_for,
                validation,
                start_step=start_step,
                steps_per_epoch=steps_per_epoch,
                epochs=recipe.epochs,
                callbacks=callbacks,
                eval_every=args.eval_every,
                verbose=args.verbose,
            )
    train_time = time.time() - started
    if checkpoint.step != total_steps:
        raise RuntimeError(
            f"Training stopped at step {checkpoint.step} of {total_steps}: "
            f"the training data of --data {args.data!r} ran out."
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
            results = model.evaluate(validation, verbose=0, return_dict=True)
        logs = {f"val_{k}": v for k, v in results.items()}

    summary = {
        "model": recipe.model,
        "recipe": recipe.name,
        "data": args.data,
        "image_size": recipe.image_size,
        "precision": args.precision,
        "strategy": type(strategy).__name__,
        "num_replicas": runtime.num_replicas,
        "num_workers": runtime.num_workers,
        "global_batch_size": runtime.global_batch_size,
        "per_replica_batch_size": runtime.per_replica_batch_size,
        "epochs": recipe.epochs,
        "steps_per_epoch": steps_per_epoch,
        "steps": checkpoint.step,
        "resumed_from_step": start_step,
        "train_time_s": round(train_time, 2),
        "train_images_per_s": round(
            (checkpoint.step - start_step)
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
    save_outputs(model, summary, write_dir)
    if not runtime.is_chief:
        shutil.rmtree(write_dir, ignore_errors=True)
    log(f"weights checksum {summary['weights_sha256']}")
    log(f"wrote model.keras, model.weights.h5, summary.json to {model_dir}")
    print(
        f"Final validation accuracy: top-1 {100 * summary['val_top1']:.2f} %, "
        f"top-5 {100 * summary['val_top5']:.2f} % ({recipe.model} on "
        f"{args.data}, {summary['steps']} steps, {train_time:.0f} s)",
        flush=True,
    )
    return model, summary


def main(argv=None):
    """Command-line entry point; returns the run's summary."""
    return run(argv)[1]


def weights_checksum(weights):
    """SHA-256 of the values of ``weights`` (replicas in sync agree)."""
    digest = hashlib.sha256()
    for weight in weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()


def save_outputs(model, summary, directory):
    """Writes the final model, weights and summary atomically.

    The files hold a plain, uncompiled functional model with the trained
    layers (no optimiser state: the checkpoints in backup/ keep that).
    """
    model = keras.Model(model.input, model.output, name=model.name)
    cb.replace_atomically(
        lambda p: model.save(p, overwrite=True),
        os.path.join(directory, "model.keras"),
    )
    cb.replace_atomically(
        lambda p: model.save_weights(p, overwrite=True),
        os.path.join(directory, "model.weights.h5"),
    )
    cb.write_json(summary, os.path.join(directory, "summary.json"))


if __name__ == "__main__":
    main(sys.argv[1:])
