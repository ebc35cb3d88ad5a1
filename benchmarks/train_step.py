"""Images/s of a full training step on CPU, SE models next to ResNet-50.

    python -m benchmarks.train_step [--batch 32] [--repeats 3]
                                    [--precisions float32,mixed_bfloat16,...]
                                    [--quick]

One training step = forward, loss (sparse categorical cross-entropy),
backward and an SGD-with-momentum update, via ``model.train_on_batch`` on the
TensorFlow backend (Keras' own compiled train function; ``jit_compile`` off,
Keras' default on CPU). SE-ResNet-50 and SE-ResNeXt-50 run next to
keras.applications' ResNet50, in float32 and under the mixed precision
policies (mixed_bfloat16; mixed_float16 with Keras' loss scaling, dropped
with a note if it fails or is far slower than float32 - CPUs lack fast fp16
convolutions). Within each precision the three models are interleaved step
by step; each figure is the median of ``--repeats`` steps. Writes
benchmarks/results/train_step.{json,md}; the last line holds the ratios.
"""

import argparse
import gc
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _util  # noqa: E402

MODELS = ("se_resnet50", "se_resnext50_32x4d", "resnet50")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# A precision whose first step is this much slower than float32's is not
# timed further (the note says so).
TOO_SLOW = 5.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--results-name", default="train_step")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.repeats = 2, 64, 1
        if args.results_name == "train_step":
            args.results_name = "train_step_quick"
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in args.precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(
            f"--precisions must be among {PRECISIONS}. "
            f"Received: --precisions={','.join(args.precisions)!r}"
        )
    return args


def build(name, keras, keras_senet, size):
    shape = (size, size, 3)
    if name == "resnet50":
        model = keras.applications.ResNet50(
            weights=None, input_shape=shape, classifier_activation=None
        )
    else:
        model = keras_senet.create_model(
            name, input_shape=shape, classifier_activation=None
        )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


def run_precision(precision, args, libs, float32_step=None):
    tf, keras, keras_senet = libs
    keras.backend.clear_session()
    gc.collect()
    keras.config.set_dtype_policy(precision)
    try:
        models = {n: build(n, keras, keras_senet, args.size) for n in MODELS}
    finally:
        keras.config.set_dtype_policy("float32")
    x = tf.random.stateless_uniform((args.batch, args.size, args.size, 3), seed=(1, 2))
    y = tf.random.stateless_uniform(
        (args.batch,), seed=(3, 4), maxval=1000, dtype=tf.int32
    )
    steps = {n: (lambda m=m: float(m.train_on_batch(x, y))) for n, m in models.items()}
    # First (tracing) step; a failing or hopeless precision stops here.
    first = {}
    for name, step in steps.items():
        start = time.perf_counter()
        loss = step()
        first[name] = time.perf_counter() - start
        if loss != loss:  # NaN
            raise FloatingPointError(f"{name} under {precision}: loss is NaN")
    if float32_step is not None:
        second = {}
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            second[name] = time.perf_counter() - start
        slowest = max(second[n] / float32_step[n] for n in second)
        if slowest > TOO_SLOW:
            return None, f"{slowest:.1f}x slower than float32 per step; not timed"
    times = _util.interleaved_timings(steps, args.repeats, warmup=0)
    return times, None


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    threads = args.threads or _util.default_threads()
    _util.configure_tf_threads(tf, threads)
    import keras

    import keras_senet

    rows, notes, float32_step = [], {}, None
    for precision in args.precisions:
        try:
            times, note = run_precision(
                precision, args, (tf, keras, keras_senet), float32_step
            )
        except Exception as error:  # report, keep the other precisions
            times, note = None, f"failed: {type(error).__name__}: {str(error)[:300]}"
        if note:
            notes[precision] = note
            print(f"{precision}: {note}", flush=True)
        if times is None:
            continue
        medians = {n: _util.median(t) for n, t in times.items()}
        if precision == "float32":
            float32_step = medians
        for name, seconds in times.items():
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "batch": args.batch,
                    "size": args.size,
                    "median_step_s": medians[name],
                    "images_per_s": args.batch / medians[name],
                    "times_s": seconds,
                }
            )
            print(f"{precision:15s} {name:20s} {medians[name]:8.3f} s/step "
                  f"{args.batch / medians[name]:8.2f} img/s", flush=True)
    img_s = {(r["model"], r["precision"]): r["images_per_s"] for r in rows}
    ratios = {}
    for precision in args.precisions:
        suffix = "" if precision == "float32" else f"_{precision}"
        base = img_s.get(("resnet50", precision))
        for name in ("se_resnet50", "se_resnext50_32x4d"):
            short = name.replace("_32x4d", "")
            ratios[f"{short}_vs_resnet50{suffix}"] = _util.ratio(
                img_s.get((name, precision)), base
            )
        if precision != "float32":
            ratios[f"se_resnet50_{precision}_vs_float32"] = _util.ratio(
                img_s.get(("se_resnet50", precision)),
                img_s.get(("se_resnet50", "float32")),
            )
    info = _util.machine_info(threads=threads)
    markdown = "\n\n".join(
        [
            "# Training step throughput (CPU, TensorFlow backend)",
            _util.machine_markdown(info),
            f"Batch {args.batch}, {args.size}px, SGD momentum 0.9, "
            "model.train_on_batch; medians of interleaved steps.",
            _util.markdown_table(
                ["model", "precision", "s/step", "img/s"],
                [(r["model"], r["precision"], r["median_step_s"],
                  r["images_per_s"]) for r in rows],
            ),
            "Notes: " + ("; ".join(f"{k}: {v}" for k, v in notes.items()) or "none"),
            "Ratios: " + _util.ratios_line(ratios),
        ]
    )
    payload = {"machine": info, "args": vars(args), "results": rows,
               "notes": notes, "ratios": ratios}
    paths = _util.write_results(args.results_name, payload, markdown)
    print("wrote", *paths)
    print(_util.ratios_line(ratios))
    return payload


if __name__ == "__main__":
    main()
