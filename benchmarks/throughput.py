"""Inference speed of the SE models next to what users would run instead.

    python -m benchmarks.throughput [--models se_resnet50,...] [--batch 1,32]
                                    [--repeats N] [--xla both|on|off] [--quick]

For every model (default: all of `BASELINES` that `keras_senet.list_models()`
has, so new families join once they are registered), in one process and one
run: our Keras model on the TensorFlow backend without and with XLA
(``jit_compile``), the matching keras.applications model (same two modes)
and timm's port on PyTorch CPU, fp32, ImageNet size (224; 299 for the
Inception family). For SE-ResNet-50 the run also times timm's own
``seresnet50`` and ``resnet50``: the SE overhead of the PyTorch peer,
measured beside ours. Batch 1 gives a latency (ms), larger batches images/s;
each figure is the median of ``--repeats`` timed runs, the candidates of a
model interleaved run by run, with the machine's load average
(``os.getloadavg()``) recorded beside it. torch uses as many threads as
TensorFlow's intra-op pool. Writes benchmarks/results/throughput.{json,md};
the last line printed holds the key ratios (images/s; ``_b1`` at batch 1).

Default (2 cores): about 15 minutes; ``--xla off`` halves it; ``--quick`` is
a smoke run (2 models, small images, one repeat).
"""

import argparse
import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# torch's OpenMP threads spin after each op by default and starve
# TensorFlow's (and the reverse) when both run in one process: timm's
# ResNet-50 at batch 1, interleaved with a Keras model, 1.74 s per image
# spinning, 0.15 s passive (2 busy cores). Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# torch and timm must be imported before TensorFlow (see tests/conftest.py).
import timm  # noqa: E402
import torch  # noqa: E402

from benchmarks import _util  # noqa: E402

# our model -> (image size, keras.applications baseline, timm baseline).
# timm's modern SE-ResNeXts join when keras_senet registers them.
BASELINES = {
    "se_resnet50": (224, "ResNet50", "legacy_seresnet50"),
    "se_resnet101": (224, "ResNet101", "legacy_seresnet101"),
    "se_resnet152": (224, "ResNet152", "legacy_seresnet152"),
    "se_resnext50_32x4d": (224, None, "legacy_seresnext50_32x4d"),
    "se_resnext101_32x4d": (224, None, "legacy_seresnext101_32x4d"),
    "senet154": (224, None, "legacy_senet154"),
    "se_bn_inception": (224, None, None),
    "se_inception_v3": (299, "InceptionV3", None),
    "se_inception_resnet_v2": (299, "InceptionResNetV2", None),
    "seresnext50_32x4d": (224, None, "seresnext50_32x4d"),
    "seresnext101d_32x8d": (224, None, "seresnext101d_32x8d"),
    "seresnextaa101d_32x8d": (224, None, "seresnextaa101d_32x8d"),
}

# The PyTorch peer's own SE overhead, timed with these models: candidate ->
# timm model (an SE network and the same network without SE).
TIMM_SE_PAIR = {
    "se_resnet50": {"timm_se": "seresnet50", "timm_base": "resnet50"},
}

QUICK_MODELS = ("se_resnet50", "se_resnext50_32x4d")

# Printed on the last line: (name, numerator, denominator), each a
# (model, candidate) pair; at the largest batch, and with a "_b1" suffix
# at batch 1 too.
KEY_RATIOS = (
    ("se_resnet50_vs_resnet50", ("se_resnet50", "ours"), ("se_resnet50", "keras_app")),
    ("se_resnet50_vs_resnet50_fbn", ("se_resnet50", "ours"),
     ("se_resnet50", "keras_app_fbn")),
    ("timm_seresnet50_vs_resnet50", ("se_resnet50", "timm_se"),
     ("se_resnet50", "timm_base")),
    ("se_resnet50_xla_vs_resnet50_xla", ("se_resnet50", "ours_xla"),
     ("se_resnet50", "keras_app_xla")),
    ("se_resnet50_vs_timm", ("se_resnet50", "ours"), ("se_resnet50", "timm")),
    ("se_resnext50_vs_timm", ("se_resnext50_32x4d", "ours"),
     ("se_resnext50_32x4d", "timm")),
    ("se_resnext101_vs_timm", ("se_resnext101_32x4d", "ours"),
     ("se_resnext101_32x4d", "timm")),
    ("senet154_vs_timm", ("senet154", "ours"), ("senet154", "timm")),
    ("se_inception_v3_vs_inception_v3", ("se_inception_v3", "ours"),
     ("se_inception_v3", "keras_app")),
    ("se_inception_resnet_v2_vs_inception_resnet_v2",
     ("se_inception_resnet_v2", "ours"), ("se_inception_resnet_v2", "keras_app")),
    ("seresnext50_32x4d_vs_timm", ("seresnext50_32x4d", "ours"),
     ("seresnext50_32x4d", "timm")),
    ("seresnext101d_32x8d_vs_timm", ("seresnext101d_32x8d", "ours"),
     ("seresnext101d_32x8d", "timm")),
    ("seresnextaa101d_32x8d_vs_timm", ("seresnextaa101d_32x8d", "ours"),
     ("seresnextaa101d_32x8d", "timm")),
)
# Ratios also printed at batch 1 (latency targets).
BATCH1_RATIOS = ("se_resnet50_vs_resnet50", "se_resnet50_vs_resnet50_fbn",
                 "timm_seresnet50_vs_resnet50")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--models", help="comma-separated registry names "
                        "(default: every model of BASELINES that is registered)")
    parser.add_argument("--batch", default="1,32", help="batch sizes, e.g. 1,32")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per figure (default 15 at batch 1, 5 above)")
    parser.add_argument("--xla", choices=("both", "on", "off"), default="both",
                        help="time the Keras models without XLA, with it, or both")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for TensorFlow and torch (default: usable cores)")
    parser.add_argument("--size", type=int, default=None,
                        help="override the image size (default: each model's)")
    parser.add_argument("--no-timm", action="store_true", help="skip the PyTorch peers")
    parser.add_argument("--no-keras-apps", action="store_true",
                        help="skip keras.applications")
    parser.add_argument("--no-fused-bn", action="store_true",
                        help="skip `keras_app_fbn`: keras.applications ResNet50 "
                        "with keras_senet.layers.BatchNormalization, the fused BN "
                        "our builders use (the SE overhead at equal BN)")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--results-name", default="throughput",
                        help="results file stem in benchmarks/results")
    return parser


def parse_args(argv=None, parser=None):
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ",".join(QUICK_MODELS)
        args.batch = "1,2"
        args.size = args.size or 96
        args.repeats = args.repeats or 1
        if args.results_name == "throughput":
            args.results_name = "throughput_quick"
    try:
        args.batches = [int(b) for b in args.batch.split(",")]
        if not args.batches or min(args.batches) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--batch must be positive integers separated by commas, "
                     f"e.g. 1,32. Received: --batch={args.batch!r}")
    for option in ("repeats", "threads", "size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option} must be a positive integer. "
                         f"Received: --{option}={value}")
    return args


def select_models(args, available, parser):
    """The models to time: ``--models`` (all registered) or the defaults."""
    if not args.models:
        return [n for n in BASELINES if n in available]
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        parser.error(f"--models names unknown models {unknown}; see "
                     f"keras_senet.list_models(). Received: --models={args.models!r}")
    return names


def _keras_candidates(tf, model, x, xla_modes):
    out = {}
    for xla in xla_modes:
        fn = tf.function(lambda t, m=model: m(t, training=False), jit_compile=xla)
        out["_xla" if xla else ""] = lambda fn=fn: fn(x).numpy()
    return out


def _timm_models(name, args):
    """candidate -> timm model name, for the PyTorch peers of ``name``."""
    if args.no_timm:
        return {}
    _, _, timm_name = BASELINES.get(name, (224, None, None))
    peers = {"timm": timm_name} if timm_name else {}
    peers.update(TIMM_SE_PAIR.get(name, {}))
    return peers


def measure_model(name, args, libs):
    """Times one model and its baselines; returns a list of result rows."""
    tf, keras, keras_senet = libs
    default_size, app_name, _ = BASELINES.get(name, (224, None, None))
    size = args.size or default_size
    xla_modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.xla]
    models = {"ours": keras_senet.create_model(name, weights=None,
                                               input_shape=(size, size, 3))}
    if app_name and not args.no_keras_apps:
        models["keras_app"] = getattr(keras.applications, app_name)(
            weights=None, input_shape=(size, size, 3)
        )
        # For the models whose SE overhead is measured (`TIMM_SE_PAIR`): the
        # same base with the fused BN, the overhead at equal BN.
        if not args.no_fused_bn and name in TIMM_SE_PAIR:
            models["keras_app_fbn"] = _util.with_fused_batchnorm(models["keras_app"])
    references = {"ours": name, "ours_xla": name, "keras_app": app_name,
                  "keras_app_xla": app_name, "keras_app_fbn": app_name,
                  "keras_app_fbn_xla": app_name}
    torch_models = {}
    for candidate, timm_name in _timm_models(name, args).items():
        torch_models[candidate] = timm.create_model(timm_name, pretrained=False).eval()
        references[candidate] = timm_name
    rows = []
    for batch in args.batches:
        rng = tf.random.Generator.from_seed(0)
        x = rng.uniform((batch, size, size, 3))
        candidates = {}
        for key, model in models.items():
            for suffix, fn in _keras_candidates(tf, model, x, xla_modes).items():
                candidates[key + suffix] = fn
        xt = torch.from_numpy(x.numpy().transpose(0, 3, 1, 2).copy())
        for key, torch_model in torch_models.items():

            def run_torch(torch_model=torch_model):
                with torch.inference_mode():
                    torch_model(xt).numpy()

            candidates[key] = run_torch
        repeats = args.repeats or (15 if batch == 1 else 5)
        times = _util.interleaved_timings(candidates, repeats, warmup=1)
        load = os.getloadavg()
        for candidate, seconds in times.items():
            med = _util.median(seconds)
            rows.append(
                {
                    "model": name,
                    "candidate": candidate,
                    "reference": references[candidate],
                    "size": size,
                    "batch": batch,
                    "median_s": med,
                    "latency_ms": med * 1e3,
                    "images_per_s": batch / med,
                    "times_s": seconds,
                    "loadavg": load,
                }
            )
            print(f"{name:24s} {candidate:14s} batch {batch:3d}: "
                  f"{med * 1e3:9.1f} ms  {batch / med:8.2f} img/s  "
                  f"load {load[0]:.2f}", flush=True)
    del models, torch_models
    keras.backend.clear_session()
    gc.collect()
    return rows


def key_ratios(rows):
    """The ratios of `KEY_RATIOS` at the largest batch of each candidate,
    and those of `BATCH1_RATIOS` at batch 1 (suffix ``_b1``)."""
    top, batch1 = {}, {}
    for row in rows:
        key = (row["model"], row["candidate"])
        if key not in top or row["batch"] > top[key]["batch"]:
            top[key] = row
        if row["batch"] == 1:
            batch1[key] = row
    ratios = {}
    for label, num, den in KEY_RATIOS:
        if num in top and den in top:
            ratios[label] = _util.ratio(top[num]["images_per_s"],
                                        top[den]["images_per_s"])
        if label in BATCH1_RATIOS and num in batch1 and den in batch1:
            if top[num]["batch"] != 1:
                ratios[label + "_b1"] = _util.ratio(batch1[num]["images_per_s"],
                                                    batch1[den]["images_per_s"])
    return ratios


def to_markdown(info, rows, ratios):
    table_rows = [
        (r["model"], r["candidate"], r["reference"], r["size"], r["batch"],
         r["latency_ms"], r["images_per_s"], f"{r['loadavg'][0]:.2f}")
        for r in rows
    ]
    return "\n\n".join(
        [
            "# Inference throughput (fp32, CPU)",
            _util.machine_markdown(info),
            "`ours` = keras-senet on TensorFlow, `_xla` = jit_compile=True, "
            "`keras_app` = keras.applications (`keras_app_fbn`: with "
            "keras_senet.layers.BatchNormalization, the fused BN our builders "
            "use, in place of Keras' BN), `timm` = timm's port on "
            "PyTorch, `timm_se` / `timm_base` = timm's seresnet50 / resnet50 "
            "(the PyTorch peer's SE overhead). Medians of interleaved "
            "repeats; latency = time per batch; load = 1-minute load average "
            "after the figure.",
            _util.markdown_table(
                ["model", "candidate", "reference", "size", "batch",
                 "ms/batch", "img/s", "load"],
                table_rows,
            ),
            "Key ratios (images/s; largest batch, `_b1` at batch 1): "
            + _util.ratios_line(ratios),
        ]
    )


def main(argv=None):
    parser = build_parser()
    args = parse_args(argv, parser)
    threads = args.threads or _util.default_threads()
    torch.set_num_threads(threads)
    import tensorflow as tf

    _util.configure_tf_threads(tf, threads)
    import keras

    import keras_senet

    names = select_models(args, keras_senet.list_models(), parser)
    info = _util.machine_info(threads=threads, torch_threads=torch.get_num_threads(),
                              loadavg_start=os.getloadavg())
    rows = []
    for name in names:
        rows += measure_model(name, args, (tf, keras, keras_senet))
    info["loadavg_end"] = os.getloadavg()
    ratios = key_ratios(rows)
    payload = {"machine": info, "args": vars(args), "results": rows,
               "ratios": ratios}
    paths = _util.write_results(args.results_name, payload,
                                to_markdown(info, rows, ratios))
    print("wrote", *paths)
    print(_util.ratios_line(ratios))
    return payload


if __name__ == "__main__":
    main()
