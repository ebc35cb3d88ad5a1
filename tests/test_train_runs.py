"""Whole training runs in subprocesses: MirroredStrategy over two logical
CPUs against one device, two MultiWorkerMirroredStrategy workers on
localhost, a SIGKILLed run resumed, and the README's main job.

Every run is small (SE-ResNet-18 at 32 px on the digits demo, a few steps);
the subprocesses import no torch, so the torch-before-TensorFlow order of
conftest.py does not matter there.
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small deterministic run: no label smoothing, seeded, fixed input order.
SMALL = [
    "--image-size", "32", "--batch-size", "16", "--label-smoothing", "0",
    "--deterministic", "--seed", "3", "--verbose", "2",
]


def _env(**extra):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update(
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        CUDA_VISIBLE_DEVICES="",
    )
    env.update(extra)
    return env


def _train(args, cwd, timeout=600, **env):
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", *args],
        cwd=cwd, env=_env(**env), capture_output=True, text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _weights(path):
    """All weight arrays of a .weights.h5 file, by their HDF5 path."""
    arrays = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.startswith("layers"):
                arrays[name] = obj[()]

        f.visititems(visit)
    assert len(arrays) > 100
    return arrays


def _losses(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    # Two logical CPU devices: must be set before TensorFlow initialises.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from training import train
    _, summary = train.run(sys.argv[1:])
    print("RESULT " + json.dumps(summary))
    """
)


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    args = SMALL + ["--epochs", "2", "--steps-per-epoch", "2", "--sync-bn",
                    "--eval-every", "2"]
    # One process per strategy (a second run in one process would not start
    # from the same random state), both with the two logical devices.
    procs = {
        strategy: subprocess.Popen(
            [sys.executable, str(script), *args, "--strategy", strategy,
             "--model-dir", str(tmp_path / strategy)],
            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        for strategy in ("one_device", "mirrored")
    }
    results = {}
    for strategy, proc in procs.items():
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-3000:]
        results[strategy] = json.loads(out.split("RESULT ")[-1])
    one, mirrored = results["one_device"], results["mirrored"]
    assert (one["num_replicas"], mirrored["num_replicas"]) == (1, 2)
    assert mirrored["per_replica_batch_size"] == 8
    # Same global batches, synchronised BN, float32: the same loss curve
    # and the same weights, up to float32 rounding: synchronised BN computes
    # its variance as E[x^2] - E[x]^2 over the replicas, which loses digits
    # where the mean is large (the stem's BN on the digits' dark background);
    # per-replica BN at half the batch would differ by far more.
    a, b = _losses(tmp_path / "one_device"), _losses(tmp_path / "mirrored")
    assert len(a) == 2 and a[-1] != a[0]
    # Epoch 1 (the loss at the initial weights and after one update) agrees
    # tightly; the drift then grows with each update (measured: up to 0.3 %
    # on epoch 2's loss).
    assert b[0] == pytest.approx(a[0], rel=1e-5)
    assert b[1] == pytest.approx(a[1], rel=1e-2)
    wa = _weights(tmp_path / "one_device" / "model.weights.h5")
    wb = _weights(tmp_path / "mirrored" / "model.weights.h5")
    total = sum(np.sum(np.square(wa[k])) for k in wa)
    diff = sum(np.sum(np.square(wb[k] - wa[k])) for k in wa)
    # Measured 0.05 % to 0.27 % after 4 steps (see the report: unexplained
    # drift of the synchronised-BN path, largest on SE biases).
    assert np.sqrt(diff / total) < 1e-2
    assert one["val_top1"] == pytest.approx(mirrored["val_top1"], abs=0.01)


@pytest.mark.slow
def test_multi_worker_on_localhost_ends_with_identical_weights(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    # With synchronised BN the moving statistics follow the global batch
    # too, so every weight (not only the trainable ones) must agree.
    args = SMALL + ["--strategy", "multi_worker", "--sync-bn", "--epochs", "1",
                    "--steps-per-epoch", "3", "--model-dir", str(tmp_path / "run")]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster,
                                "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "training.train", *args], cwd=tmp_path,
            env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        ))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    sums = [re.findall(r"weights checksum ([0-9a-f]{64})", o) for o in outputs]
    assert all(len(s) == 1 for s in sums) and sums[0] == sums[1]
    for out in outputs:
        assert "2 replica(s) on 2 worker(s)" in out
    # Only the chief (worker 0) wrote the final files.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["num_workers"] == 2
    assert summary["weights_sha256"] == sums[0][0]
    assert sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.slow
def test_sigkilled_run_resumes_where_it_stopped(tmp_path):
    args = SMALL + ["--epochs", "2", "--steps-per-epoch", "6",
                    "--save-every", "2"]
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    # The uninterrupted reference runs alongside the run to be killed.
    reference = subprocess.Popen(
        [sys.executable, "-m", "training.train", *args, "--model-dir",
         str(reference_dir)], cwd=tmp_path, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    command = [sys.executable, "-m", "training.train", *args, "--model-dir",
               str(resumed_dir)]
    victim = subprocess.Popen(command, cwd=tmp_path, env=_env(),
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    # Kill it mid-epoch 2, once the step-8 checkpoint is on disk.
    target = resumed_dir / "backup" / "ckpt-000000008.weights.h5"
    deadline = time.time() + 500
    while not target.exists() and victim.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "finished before the kill"
    assert not (resumed_dir / "summary.json").exists()

    out = _train([*args, "--model-dir", str(resumed_dir)], tmp_path)
    started = int(re.search(r"resuming from step (\d+) of 12", out).group(1))
    assert 8 <= started < 12  # not from scratch, from a mid-epoch checkpoint
    ref_out = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, ref_out[-3000:]

    ref = json.loads((reference_dir / "summary.json").read_text())
    res = json.loads((resumed_dir / "summary.json").read_text())
    assert ref["steps"] == res["steps"] == 12
    assert res["resumed_from_step"] == started
    wa = _weights(reference_dir / "model.weights.h5")
    wb = _weights(resumed_dir / "model.weights.h5")
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    # Same learning rate and loss at the end of the last epoch.
    with open(reference_dir / "history.csv") as f:
        ref_last = list(csv.DictReader(f))[-1]
    with open(resumed_dir / "history.csv") as f:
        res_last = list(csv.DictReader(f))[-1]
    assert float(res_last["lr"]) == pytest.approx(float(ref_last["lr"]))
    assert float(res_last["epoch"]) == float(ref_last["epoch"]) == 1


@pytest.mark.slow
def test_main_job_defaults_reach_95_percent(tmp_path):
    """The README's first command, as is: `python -m training.train`."""
    started = time.time()
    out = _train([], tmp_path, timeout=900)
    elapsed = time.time() - started
    last = out.strip().splitlines()[-1]
    top1 = float(re.search(r"top-1 ([\d.]+) %", last).group(1))
    assert last.startswith("Final validation accuracy"), last
    assert top1 >= 95.0, out[-2000:]
    run_dir = tmp_path / "runs" / "demo-se_resnet18"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_top1"] * 100 == pytest.approx(top1, abs=0.01)
    assert {"model.keras", "model.weights.h5", "history.csv"} <= set(
        os.listdir(run_dir))
    print(f"main job: top-1 {top1:.2f} % in {elapsed:.0f} s wall")

    # The evaluation entry point, on the trained weights, agrees: it takes
    # the model and image size from the run's summary.json, as a user who
    # just ran the README's command would expect.
    proc = subprocess.run(
        [sys.executable, "-m", "training.evaluate",
         "--weights", str(run_dir / "model.weights.h5"), "--data", "demo"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = float(re.search(r"top-1 ([\d.]+) %", proc.stdout).group(1))
    assert ev == pytest.approx(top1, abs=0.01)


# ------------------------------------------ SIGTERM, lock, rerun, outputs


def _files(directory):
    return {
        os.path.relpath(os.path.join(root, name), directory)
        for root, _, names in os.walk(directory) for name in names
    }


def _mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.slow
def test_sigterm_saves_the_step_and_the_same_command_resumes(tmp_path, capsys):
    """SIGTERM: checkpoint at the current step, exit 143, no temporary files;
    while it runs a second training into its directory is refused naming
    it; the same command then resumes, finishes, and a third run reports
    the finished run without touching it."""
    from training import train

    run_dir = tmp_path / "run"
    # No periodic checkpoint (--save-every 1000) and one 6-step epoch: the
    # only checkpoint before the end is the one SIGTERM makes. SIGTERM comes
    # as fit() starts (compiling the step takes seconds), so the run stops
    # after one of its first steps, whatever the machine's speed.
    args = ["--image-size", "32", "--batch-size", "16", "--label-smoothing",
            "0", "--seed", "3", "--epochs", "1", "--steps-per-epoch", "6",
            "--save-every", "1000", "--model-dir", str(run_dir)]
    victim = subprocess.Popen(
        [sys.executable, "-m", "training.train", *args], cwd=tmp_path,
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.umask(0o002),
    )
    def wait_for(condition, what):
        deadline = time.time() + 500
        while not condition():
            assert victim.poll() is None, victim.communicate()
            assert time.time() < deadline, what
            time.sleep(0.05)

    try:
        # The lock is taken (and its holder named) before the model is built.
        lock = run_dir / ".lock"
        wait_for(lambda: lock.exists() and lock.read_text(), "no lock")
        # A second training into the same directory is refused at once,
        # naming the directory and the process that holds it.
        with pytest.raises(SystemExit) as refused:
            train.main(args)
        assert refused.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"pid {victim.pid} on host" in err and str(run_dir) in err

        # CSVLogger creates history.csv as fit() starts.
        wait_for((run_dir / "history.csv").exists, "training did not start")
        victim.send_signal(signal.SIGTERM)
        out, err = victim.communicate(timeout=300)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == 143, out[-2000:] + err[-2000:]
    match = re.search(r"Stopped by SIGTERM \(preempted\) at step (\d+) of 6;"
                      r".*Run the same command again", err)
    assert match, err[-2000:]
    step = int(match.group(1))
    assert 1 <= step < 6
    files = _files(run_dir)
    assert files == {"history.csv", "run.json",
                     f"backup/ckpt-{step:09d}.weights.h5"}, files
    # Written with the permissions open() gives under the run's umask.
    assert _mode(run_dir / "backup" / f"ckpt-{step:09d}.weights.h5") == 0o664
    assert _mode(run_dir / "run.json") == 0o664
    assert "Traceback" not in err
    # One line per epoch in a log, not a progress bar.
    assert "\x1b[" not in out and "\r" not in out and "━" not in out

    # The same command resumes from that step and finishes (in-process, so
    # under this process's umask, set here to tell it from a fixed mode).
    old_umask = os.umask(0o007)
    try:
        _, summary = train.run(args)
    finally:
        os.umask(old_umask)
    out = capsys.readouterr().out
    assert f"resuming from step {step} of 6" in out
    assert "━" not in out and "\x1b[" not in out
    assert summary["steps"] == 6 and summary["resumed_from_step"] == step
    # The final files, readable as the umask allows; backup/ is pruned and
    # the lock is gone.
    assert _files(run_dir) == {"history.csv", "run.json", "model.keras",
                               "model.weights.h5", "classes.json",
                               "summary.json"}
    for name in ("model.keras", "model.weights.h5", "summary.json",
                 "classes.json"):
        assert _mode(run_dir / name) == 0o660, name
    assert json.loads((run_dir / "classes.json").read_text()) == [
        str(d) for d in range(10)]
    text = (run_dir / "summary.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert json.loads(text)["classes"] == [str(d) for d in range(10)]

    # Running the finished run again reports it and changes nothing.
    before = {name: (run_dir / name).read_bytes()
              for name in ("summary.json", "model.weights.h5", "history.csv")}
    model, again = train.run(args)
    out = capsys.readouterr().out
    assert model is None and again == json.loads(text)
    assert "training already finished" in out
    assert out.strip().splitlines()[-1] == train.final_line(json.loads(text))
    for name, content in before.items():
        assert (run_dir / name).read_bytes() == content, name

    # A rerun with a learning rate that changes the result is refused.
    with pytest.raises(SystemExit) as refused:
        train.main(args + ["--lr", "1e6"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "learning_rate (--lr/--absolute-lr)" in err
    assert "recipe.lr_per_256 (--lr) 0.8 -> 1000000.0" in err
