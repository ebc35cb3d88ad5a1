"""Inference speed of the SE models next to what users would run instead.

    python -m benchmarks.throughput [--models se_resnet50,...] [--batch 1,32]
                                    [--repeats N] [--xla both|on|off] [--quick]

For every model (default: all of `BASELINES` that `keras_senet.list_models()`
has, so the Inception family joins once it is registered), in one process
and one run: our Keras model on the TensorFlow backend without and with XLA
(``jit_compile``), the matching keras.applications model (same two modes) and
timm's ``legacy_*`` port on PyTorch CPU, fp32, ImageNet size (224; 299 for
the Inception family). Batch 1 gives a latency (ms), larger batches images/s;
each figure is the median of ``--repeats`` timed runs, the candidates of a
model interleaved run by run. torch uses as many threads as TensorFlow's
intra-op pool. Writes benchmarks/results/throughput.{json,md}; the last line
printed holds the key ratios.

Default (2 cores): about 10 minutes without SENet-154's XLA variant counted;
``--quick`` is a smoke run (2 models, small images, one repeat).
"""

import argparse
import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# torch and timm must be imported before TensorFlow (see tests/conftest.py).
import timm  # noqa: E402
import torch  # noqa: E402

from benchmarks import _util  # noqa: E402

# our model -> (image size, keras.applications baseline, timm baseline)
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
}

QUICK_MODELS = ("se_resnet50", "se_resnext50_32x4d")

# Printed on the last line: (name, numerator, denominator) as
# (model, candidate) pairs at the largest batch.
KEY_RATIOS = (
    ("se_resnet50_vs_resnet50", ("se_resnet50", "ours"), ("se_resnet50", "keras_app")),
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
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated registry names")
    parser.add_argument("--batch", default="1,32", help="batch sizes, e.g. 1,32")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per figure (default 7 at batch 1, 3 above)")
    parser.add_argument("--xla", choices=("both", "on", "off"), default="both")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=None,
                        help="override the image size (default: each model's)")
    parser.add_argument("--no-timm", action="store_true")
    parser.add_argument("--no-keras-apps", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--results-name", default="throughput")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ",".join(QUICK_MODELS)
        args.batch = "1,2"
        args.size = args.size or 96
        args.repeats = args.repeats or 1
        if args.results_name == "throughput":
            args.results_name = "throughput_quick"
    return args


def _keras_candidates(tf, keras, model, x, xla_modes):
    out = {}
    for xla in xla_modes:
        fn = tf.function(lambda t, m=model: m(t, training=False), jit_compile=xla)
        out["_xla" if xla else ""] = lambda fn=fn: fn(x).numpy()
    return out


def measure_model(name, batches, args, libs):
    """Times one model and its baselines; returns a list of result rows."""
    tf, keras, keras_senet = libs
    default_size, app_name, timm_name = BASELINES.get(name, (224, None, None))
    size = args.size or default_size
    xla_modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.xla]
    models = {"ours": keras_senet.create_model(name, weights=None,
                                               input_shape=(size, size, 3))}
    if app_name and not args.no_keras_apps:
        models["keras_app"] = getattr(keras.applications, app_name)(
            weights=None, input_shape=(size, size, 3)
        )
    torch_model = None
    if timm_name and not args.no_timm:
        torch_model = timm.create_model(timm_name, pretrained=False).eval()
    rows = []
    for batch in batches:
        rng = tf.random.Generator.from_seed(0)
        x = rng.uniform((batch, size, size, 3))
        candidates = {}
        for key, model in models.items():
            for suffix, fn in _keras_candidates(tf, keras, model, x, xla_modes).items():
                candidates[key + suffix] = fn
        if torch_model is not None:
            xt = torch.from_numpy(x.numpy().transpose(0, 3, 1, 2).copy())

            def run_torch(xt=xt):
                with torch.inference_mode():
                    torch_model(xt).numpy()

            candidates["timm"] = run_torch
        repeats = args.repeats or (7 if batch == 1 else 3)
        times = _util.interleaved_timings(candidates, repeats, warmup=1)
        for candidate, seconds in times.items():
            med = _util.median(seconds)
            rows.append(
                {
                    "model": name,
                    "candidate": candidate,
                    "reference": {
                        "ours": name, "ours_xla": name,
                        "keras_app": app_name, "keras_app_xla": app_name,
                        "timm": timm_name,
                    }[candidate],
                    "size": size,
                    "batch": batch,
                    "median_s": med,
                    "latency_ms": med * 1e3,
                    "images_per_s": batch / med,
                    "times_s": seconds,
                }
            )
            print(f"{name:24s} {candidate:14s} batch {batch:3d}: "
                  f"{med * 1e3:9.1f} ms  {batch / med:8.2f} img/s", flush=True)
    del models, torch_model
    keras.backend.clear_session()
    gc.collect()
    return rows


def key_ratios(rows):
    top = {}
    for row in rows:
        key = (row["model"], row["candidate"])
        if key not in top or row["batch"] > top[key]["batch"]:
            top[key] = row
    ratios = {}
    for label, num, den in KEY_RATIOS:
        if num in top and den in top:
            ratios[label] = _util.ratio(top[num]["images_per_s"], top[den]["images_per_s"])
    return ratios


def to_markdown(info, rows, ratios):
    table_rows = [
        (r["model"], r["candidate"], r["reference"], r["size"], r["batch"],
         r["latency_ms"], r["images_per_s"])
        for r in rows
    ]
    return "\n\n".join(
        [
            "# Inference throughput (fp32, CPU)",
            _util.machine_markdown(info),
            "`ours` = keras-senet on TensorFlow, `_xla` = jit_compile=True, "
            "`keras_app` = keras.applications, `timm` = timm legacy_* on "
            "PyTorch. Medians of interleaved repeats; latency = time per batch.",
            _util.markdown_table(
                ["model", "candidate", "reference", "size", "batch",
                 "ms/batch", "img/s"],
                table_rows,
            ),
            "Key ratios (largest batch, images/s): "
            + _util.ratios_line(ratios),
        ]
    )


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or _util.default_threads()
    torch.set_num_threads(threads)
    import tensorflow as tf

    _util.configure_tf_threads(tf, threads)
    import keras

    import keras_senet

    available = keras_senet.list_models()
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(
                f"--models names unknown models {unknown}. Available: "
                f"{available}. Received: --models={args.models!r}"
            )
    else:
        names = [n for n in BASELINES if n in available]
    try:
        batches = [int(b) for b in args.batch.split(",")]
        if not batches or min(batches) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"--batch must be positive integers separated by commas. "
            f"Received: --batch={args.batch!r}"
        ) from None
    info = _util.machine_info(threads=threads, torch_threads=torch.get_num_threads())
    rows = []
    for name in names:
        rows += measure_model(name, batches, args, (tf, keras, keras_senet))
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
