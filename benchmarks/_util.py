"""Shared helpers of the benchmark scripts: threads, timing, results files.

Nothing here imports TensorFlow, torch or JAX at module import: the scripts
decide the import order (torch and timm before TensorFlow; no TensorFlow at
all in `benchmarks.gpu_jax`).
"""

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def default_threads():
    """Cores this process may use (the affinity mask, not the machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configure_tf_threads(tf, threads):
    """Intra-op threads = ``threads``, inter-op 1 (one model at a time).

    Must run before TensorFlow executes its first op.
    """
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads=None, **extra):
    """What a result depends on: CPU, cores, threads, library versions."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": default_threads(),
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for package in ("tensorflow", "keras", "jax", "torch", "timm", "numpy"):
        info[package] = _version(package)
    info.update(extra)
    return info


def interleaved_timings(candidates, repeats, warmup=1):
    """Times each callable ``repeats`` times, the candidates interleaved.

    ``candidates`` maps a name to a zero-argument callable that runs the work
    to completion (results fetched to the host). Interleaving spreads
    background load on a shared machine evenly over the candidates. Returns
    ``{name: [seconds, ...]}``.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values):
    return statistics.median(values)


def _atomic_write(path, text):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_results(name, payload, markdown, results_dir=None):
    """Writes ``<name>.json`` and ``<name>.md`` atomically; returns paths."""
    results_dir = results_dir or RESULTS_DIR
    json_path = os.path.join(results_dir, f"{name}.json")
    md_path = os.path.join(results_dir, f"{name}.md")
    _atomic_write(json_path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
    _atomic_write(md_path, markdown.rstrip() + "\n")
    return json_path, md_path


def markdown_table(headers, rows):
    """A GitHub markdown table; ``None`` cells print as "-"."""

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        return str(value)

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_markdown(info):
    keys = ("date", "cpu", "usable_cores", "threads", "tensorflow", "keras",
            "torch", "timm", "jax", "loadavg_start", "loadavg_end")

    def text(value):
        if isinstance(value, (list, tuple)):  # load averages
            return "/".join(f"{v:.2f}" for v in value)
        return value

    return "Machine: " + ", ".join(
        f"{k}={text(info[k])}" for k in keys if info.get(k) is not None
    )


def ratio(numerator, denominator):
    if not numerator or not denominator:
        return None
    return numerator / denominator


def ratios_line(ratios):
    """The scripts' last line: ``name=value`` pairs (3 decimals)."""
    return " ".join(
        f"{k}={'n/a' if v is None else format(v, '.3f')}" for k, v in ratios.items()
    )


def with_fused_batchnorm(model):
    """A copy of ``model`` (same weights) whose `keras.layers.BatchNormalization`
    layers are `keras_senet.layers.BatchNormalization` (TensorFlow's fused
    kernel), or ``None`` when it has none: what the builders gain once they
    use that layer."""
    import keras

    from keras_senet.layers import BatchNormalization

    if not any(type(layer) is keras.layers.BatchNormalization for layer in model.layers):
        return None

    def clone(layer):
        cls = layer.__class__
        if cls is keras.layers.BatchNormalization:
            cls = BatchNormalization
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
