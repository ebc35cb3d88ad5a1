"""Trainer pieces, in process: recipes and schedules, weight decay, sync BN,
checkpoints, mixed precision runs.

The distributed runs, the kill-and-resume run and the README's main job are
in test_train_runs.py (subprocesses).
"""

import json
import math
import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from training import callbacks as cb
from training import distribute
from training import recipes
from training import train


# --------------------------------------------------------------- schedules


def _lrs(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_paper_schedule_scales_linearly_and_steps_every_30_epochs():
    # The paper: lr 0.6 at batch 1024, divided by 10 every 30 epochs.
    spe = 10
    schedule = recipes.make_schedule(recipes.get_recipe("paper"), 512, spe)
    peak = 0.6 * 512 / 1024
    steps = [0, 1, 30 * spe - 1, 30 * spe, 60 * spe - 1, 60 * spe, 99 * spe]
    expected = [peak, peak, peak, peak / 10, peak / 10, peak / 100, peak / 1000]
    np.testing.assert_allclose(_lrs(schedule, steps), expected, rtol=1e-6)
    assert math.isclose(expected[0], 0.3) and math.isclose(expected[3], 0.03)


def test_nvidia_schedule_warmup_then_cosine():
    spe, batch = 10, 512
    recipe = recipes.get_recipe("nvidia")
    schedule = recipes.make_schedule(recipe, batch, spe)
    peak = 0.256 * batch / 256
    warm, total = 8 * spe, 90 * spe
    steps = [0, 39, 79, 80, 80 + (total - warm) // 2, total - 1]
    expected = [
        peak * (s + 1) / warm
        if s < warm
        else 0.5 * peak * (1 + np.cos(np.pi * (s - warm) / (total - warm)))
        for s in steps
    ]
    np.testing.assert_allclose(
        _lrs(schedule, steps), expected, rtol=1e-5, atol=1e-7  # float32
    )
    assert math.isclose(expected[1], peak / 2)  # half-way through warm-up
    assert math.isclose(expected[4], peak / 2)  # half-way through cosine


def test_absolute_lr_overrides_scaling_and_schedule_round_trips():
    recipe = recipes.get_recipe("demo", warmup_epochs=0, schedule="constant")
    schedule = recipes.make_schedule(recipe, 64, 5, learning_rate=0.123)
    assert float(schedule(7)) == pytest.approx(0.123)
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    assert isinstance(clone, recipes.RecipeSchedule)
    assert clone.get_config() == schedule.get_config()


def test_recipe_errors_name_the_field():
    with pytest.raises(ValueError, match="epochs"):
        recipes.get_recipe("paper", epochs=0)
    with pytest.raises(ValueError, match="recipe='nope'"):
        recipes.get_recipe("nope")
    with pytest.raises(ValueError, match="schedule"):
        recipes.RecipeSchedule(0.1, 10, 5, schedule="linear")
    # The command line maps onto recipe fields.
    args = train.build_parser().parse_args(
        ["--recipe", "paper", "--lr", "0.2", "--epochs", "3", "--batch-size", "64"]
    )
    recipe = train.resolve_recipe(args)
    assert (recipe.lr_per_256, recipe.epochs, recipe.batch_size) == (0.2, 3, 64)
    assert recipe.learning_rate(64) == pytest.approx(0.05)


# --------------------------------------------------- weight decay, sync BN


@pytest.fixture(scope="module")
def small_model():
    import keras_senet

    keras.config.set_dtype_policy("float32")
    return keras_senet.create_model(
        "se_resnet18", input_shape=(32, 32, 3), classes=10,
        classifier_activation=None,
    )


def _all_layers(layer):
    yield layer
    for sub in getattr(layer, "layers", []):
        yield from _all_layers(sub)
    for attr in ("fc1", "fc2"):  # SqueezeExcite's inner Dense layers
        if hasattr(layer, attr):
            yield getattr(layer, attr)


def test_weight_decay_excludes_batch_norm_and_bias(small_model):
    wd = 1e-3
    decayed = distribute.apply_weight_decay(small_model, wd)
    # The independent picture: kernels of Conv2D / Dense layers (the SE
    # blocks' FCs included) are decayed; BN parameters and biases are not.
    kernels, exempt = [], []
    for layer in _all_layers(small_model):
        if isinstance(layer, keras.layers.BatchNormalization):
            exempt += [layer.gamma, layer.beta]
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernels.append(layer.kernel)
            if layer.bias is not None:
                exempt.append(layer.bias)
    # SE-ResNet-18: 20 convolutions (each with a BN), 8 SE blocks of two
    # FCs with biases, one classifier.
    assert (len(kernels), len(exempt)) == (20 + 16 + 1, 2 * 20 + 16 + 1)
    assert {id(v) for v in decayed} == {id(v) for v in kernels}
    assert all(v.regularizer is None for v in exempt)

    penalty = float(sum(keras.ops.convert_to_numpy(l) for l in small_model.losses))
    expected = wd / 2 * sum(
        float(np.sum(np.square(keras.ops.convert_to_numpy(k)))) for k in kernels
    )
    assert penalty == pytest.approx(expected, rel=1e-5)

    # Gradient of the penalty: wd * w on a kernel, nothing on BN / biases.
    bn = small_model.get_layer("conv2_block1_1_bn")
    se = small_model.get_layer("conv2_block1_se")
    conv = small_model.get_layer("conv1_conv")
    watched = [conv.kernel, bn.gamma, bn.beta, se.fc1.bias]
    with tf.GradientTape() as tape:
        loss = tf.add_n(small_model.losses)
    grads = tape.gradient(loss, [v.value for v in watched])
    np.testing.assert_allclose(
        grads[0], wd * keras.ops.convert_to_numpy(conv.kernel), rtol=1e-5
    )
    assert all(g is None for g in grads[1:])

    distribute.apply_weight_decay(small_model, 0.0)
    assert not small_model.losses


def test_synchronize_batch_norm_rebuilds_with_same_weights(small_model):
    synced = distribute.synchronize_batch_norm(small_model)
    bns = [l for l in synced.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.synchronized for l in bns)
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    np.testing.assert_allclose(
        synced.predict(x, verbose=0), small_model.predict(x, verbose=0),
        rtol=1e-5, atol=1e-5,
    )


# ----------------------------------------- runtime, precision, bad input


def test_runtime_batch_split_and_errors():
    strategy = distribute.create_strategy("one_device")
    runtime = distribute.make_runtime(strategy, 32)
    assert (runtime.num_replicas, runtime.per_replica_batch_size) == (1, 32)
    assert runtime.is_chief
    with pytest.raises(ValueError, match="strategy='gpu_farm'"):
        distribute.create_strategy("gpu_farm")
    with pytest.raises(ValueError, match="precision='float8'"):
        distribute.set_precision("float8")
    os.environ.pop("TF_CONFIG", None)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.create_strategy("multi_worker")


def test_resume_refuses_a_changed_run(tmp_path):
    run_file = tmp_path / "run.json"
    info = dict(model="se_resnet18", data="demo", global_batch_size=64,
                steps_per_epoch=22, epochs=8)
    cb.write_json(info, run_file)
    train.check_resumable(str(run_file), info)  # same settings: fine
    with pytest.raises(ValueError, match="global_batch_size"):
        train.check_resumable(str(run_file), dict(info, global_batch_size=128))


# ------------------------------------------------------------ checkpoints


def _tiny_compiled_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


def test_checkpoints_are_atomic_and_a_damaged_one_is_skipped(tmp_path):
    model = _tiny_compiled_model()
    x = np.random.RandomState(0).rand(8, 4).astype("float32")
    y = np.zeros((8, 3), "float32")
    ckpt = cb.StepCheckpoint(str(tmp_path), save_freq=2, keep=2)
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[ckpt])
    # 4 steps per epoch, saves at 2, 4, 6, 8; only the last two are kept.
    assert [s for s, _ in cb.list_checkpoints(str(tmp_path))] == [8, 6]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    weights = [w.numpy().copy() for w in model.weights]
    momentum = [v.numpy().copy() for v in model.optimizer.variables]

    # A newer, damaged checkpoint (truncated HDF5) is reported and skipped.
    good = dict(cb.list_checkpoints(str(tmp_path)))[8]
    with open(good, "rb") as f:
        head = f.read(600)
    with open(tmp_path / "ckpt-000000010.weights.h5", "wb") as f:
        f.write(head)
    fresh = _tiny_compiled_model()
    with pytest.warns(UserWarning, match="ckpt-000000010"):
        step = cb.restore_latest(fresh, str(tmp_path))
    assert step == 8
    for a, b in zip(weights, fresh.weights):
        np.testing.assert_array_equal(a, b.numpy())
    # The optimiser state (iterations, momenta) came back too.
    for a, b in zip(momentum, fresh.optimizer.variables):
        np.testing.assert_array_equal(a, b.numpy())
    assert int(fresh.optimizer.iterations.numpy()) == 8
    with h5py.File(good, "r") as f:
        assert "optimizer" in f


# ---------------------------------------------------- mixed precision


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_demo_run_is_finite_and_learns(tmp_path, precision):
    model, summary = train.run([
        "--precision", precision, "--epochs", "3", "--steps-per-epoch", "4",
        "--batch-size", "32", "--label-smoothing", "0", "--warmup-epochs", "0",
        "--schedule", "constant", "--lr", "0.4", "--eval-every", "3",
        "--model-dir", str(tmp_path), "--verbose", "0", "--seed", "1",
    ])
    compute = "bfloat16" if precision == "mixed_bfloat16" else "float16"
    assert model.get_layer("conv1_conv").compute_dtype == compute
    assert model.get_layer("conv1_conv").kernel.dtype == "float32"
    assert model.output.dtype == "float32"  # logits (and loss) in float32
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        precision == "mixed_float16"
    )
    import csv

    with open(tmp_path / "history.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert np.isfinite(summary["val_loss"]) and summary["steps"] == 12
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)


# ------------------------------- non-finite states, full disks, permissions


def _fit_steps(model, checkpoint, x, y):
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[checkpoint],
              shuffle=False)


def test_checkpoints_never_hold_a_non_finite_state(tmp_path):
    model = _tiny_compiled_model()
    rng = np.random.RandomState(0)
    x = rng.rand(4, 4).astype("float32")
    y = np.zeros((4, 3), "float32")
    ckpt = cb.StepCheckpoint(str(tmp_path), save_freq=1, keep=2, total_steps=9)
    _fit_steps(model, ckpt, x, y)
    good = cb.list_checkpoints(str(tmp_path))
    assert [s for s, _ in good] == [2, 1]
    contents = {p: open(p, "rb").read() for _, p in good}

    # A NaN in the third batch: the loss names the step; nothing is saved.
    x_bad = np.concatenate([x, x])
    x_bad[4, 0] = np.nan
    ckpt._epoch_base = ckpt.step = 2  # as after a resume at step 2
    with pytest.raises(cb.Diverged, match=r"loss became nan at step 3 of 9"):
        model.fit(x_bad[4:], np.zeros((4, 3), "float32"), batch_size=2,
                  epochs=1, verbose=0, callbacks=[ckpt], shuffle=False,
                  initial_epoch=0)
    # A finite loss but a non-finite weight: refused before writing.
    kernel = model.layers[-1].kernel
    kernel.assign(np.full(kernel.shape, np.inf, "float32"))
    with pytest.raises(cb.Diverged, match=r"first in .*kernel.* at step"):
        ckpt.save()
    assert cb.list_checkpoints(str(tmp_path)) == good
    assert {p: open(p, "rb").read() for _, p in good} == contents
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    model = _tiny_compiled_model()
    x = np.random.RandomState(0).rand(4, 4).astype("float32")
    ckpt = cb.StepCheckpoint(str(tmp_path), save_freq=1, keep=2)
    _fit_steps(model, ckpt, x, np.zeros((4, 3), "float32"))
    good = cb.list_checkpoints(str(tmp_path))
    contents = {p: open(p, "rb").read() for _, p in good}

    def full_disk(path, overwrite=True):
        # Like Keras on ENOSPC: raises while its HDF5 file is still open.
        f = h5py.File(path, "w")
        f.create_dataset("half", data=np.zeros(1000))
        raise OSError(errno.ENOSPC, "Can't write data (file write failed)")

    monkeypatch.setattr(model, "save_weights", full_disk)
    ckpt.step = 3
    with pytest.raises(cb.OutputError) as error:
        ckpt.save()
    message = str(error.value)
    assert "ckpt-000000003.weights.h5 (No space left on device)" in message
    assert "last good checkpoint is step 2" in message
    assert "run the same command again" in message
    assert cb.list_checkpoints(str(tmp_path)) == good
    assert {p: open(p, "rb").read() for _, p in good} == contents
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(p) for _, p in good)
    # The writer's file was closed, not left to interpreter exit.
    assert not [fid for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)
                if ".tmp-" in fid.name]


def test_outputs_get_the_permissions_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        assert cb.file_mode() == 0o640
        cb.write_json({"a": 1}, tmp_path / "x.json")
        cb.replace_atomically(
            lambda p: open(p, "w").write("w"), str(tmp_path / "m.weights.h5"))
        os.umask(0o002)
        cb.write_json({"a": 2}, tmp_path / "x.json")  # replaced: new mode
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.weights.h5").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "x.json").st_mode & 0o777 == 0o664


def test_summary_json_is_strict_json(tmp_path):
    cb.write_json({"val_loss": float("nan"), "x": [float("inf"), 1.5]},
                  tmp_path / "s.json")
    text = (tmp_path / "s.json").read_text()
    value = json.loads(text, parse_constant=lambda c: pytest.fail(c))
    assert value == {"val_loss": None, "x": [None, 1.5]}


def test_recipes_and_schedules_refuse_non_finite_numbers():
    for value in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="lr_per_256"):
            recipes.get_recipe("demo", lr_per_256=value)
        with pytest.raises(ValueError, match="learning_rate"):
            recipes.RecipeSchedule(value, 10, 5)
    with pytest.raises(ValueError, match="freeze_epochs"):
        recipes.get_recipe("demo", freeze_epochs=9)  # 8 epochs
    with pytest.raises(ValueError, match="momentum"):
        recipes.get_recipe("demo", momentum=float("nan"))


def test_resume_refuses_a_changed_learning_rate(tmp_path):
    run_file = tmp_path / "run.json"
    info = dict(model="se_resnet18", data="demo", learning_rate=0.2,
                precision="float32", sync_bn=False,
                recipe=dict(recipes.get_recipe("demo").__dict__))
    cb.write_json(info, run_file)
    train.check_resumable(str(run_file), info)
    changed = dict(info, learning_rate=1e6,
                   recipe=dict(info["recipe"], lr_per_256=1e6,
                               description="other words"))
    with pytest.raises(ValueError) as error:
        train.check_resumable(str(run_file), changed)
    message = str(error.value)
    assert "learning_rate (--lr/--absolute-lr) 0.2 -> 1000000.0" in message
    assert "recipe.lr_per_256 (--lr) 0.8 -> 1000000.0" in message
    assert "description" not in message
    with pytest.raises(ValueError, match=r"sync_bn \(--sync-bn\)"):
        train.check_resumable(str(run_file), dict(info, sync_bn=True))


# ----------------------------------------------------------- run-dir lock


def test_a_locked_run_directory_refuses_a_second_training(tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    from training import rundir

    first = rundir.RunDirLock(tmp_path).acquire()
    with pytest.raises(ValueError) as error:
        rundir.RunDirLock(tmp_path).acquire()
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(error.value)
    assert repr(str(tmp_path)) in str(error.value)
    first.release()
    assert not (tmp_path / rundir.LOCK_NAME).exists()

    # A holder that is SIGKILLed leaves no stale lock.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from training import rundir; "
         "rundir.RunDirLock(sys.argv[1]).acquire(); print('held', flush=True);"
         " time.sleep(600)", str(tmp_path)],
        cwd=repo, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=repo),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"pid {holder.pid} on host"):
            rundir.RunDirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with rundir.RunDirLock(tmp_path) as lock:
        assert lock.held
