"""Images/s of a full training step on CPU, SE models next to ResNet-50.

    python -m benchmarks.train_step [--models se_resnet50,se_resnext50_32x4d]
                                    [--precisions float32,mixed_bfloat16]
                                    [--batch 32] [--repeats 5] [--no-timm]
                                    [--quick]

One training step = forward, loss (sparse categorical cross-entropy),
backward and an SGD-with-momentum update, via ``model.train_on_batch`` on the
TensorFlow backend (Keras' own compiled train function; ``jit_compile`` off,
Keras' default on CPU). The SE models run next to keras.applications'
ResNet50 (always included), in float32 and under the mixed precision policies
(mixed_bfloat16; mixed_float16 with Keras' loss scaling, dropped with a note
if it fails or is far slower than float32 - CPUs lack fast fp16
convolutions). The PyTorch peers run the same step with timm's models in the
same process, interleaved with ours (float32, and bfloat16 autocast for
mixed_bfloat16): ``resnet50``, ``seresnet50`` and the ``legacy_*`` ports of
the SE models, so that the SE overhead of each framework is measured side by
side. Within each precision all candidates are interleaved step by step;
each figure is the median of ``--repeats`` steps, with the machine's load
average beside it. Writes benchmarks/results/train_step.{json,md}; the last
line holds the ratios.
"""

import argparse
import gc
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# torch's OpenMP threads spin after each op by default and starve
# TensorFlow's (and the reverse) when both run in one process: timm's
# ResNet-50 at batch 1, interleaved with a Keras model, 1.74 s per image
# spinning, 0.15 s passive (2 busy cores). Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# torch and timm must be imported before TensorFlow (see tests/conftest.py).
try:
    import timm  # noqa: E402
    import torch  # noqa: E402
except ImportError:  # pragma: no cover - the peers are optional
    timm = torch = None

from benchmarks import _util  # noqa: E402

BASELINE = "resnet50"
MODELS = ("se_resnet50", "se_resnext50_32x4d")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# timm peer of each model (the same architecture on PyTorch), and timm's
# own SE-ResNet-50 beside its ResNet-50 (the peer's SE overhead).
TIMM_PEERS = {
    "resnet50": "resnet50",
    "se_resnet50": "legacy_seresnet50",
    "se_resnext50_32x4d": "legacy_seresnext50_32x4d",
    "timm_seresnet50": "seresnet50",
}
# Precisions the PyTorch peers run (autocast dtype; None = float32).
TIMM_PRECISIONS = {"float32": None, "mixed_bfloat16": "bfloat16"}
# A precision whose first step is this much slower than float32's is not
# timed further (the note says so).
TOO_SLOW = 5.0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated registry names, timed next to "
                        "keras.applications ResNet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed steps per candidate")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16",
                        help=f"comma-separated, among {', '.join(PRECISIONS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for TensorFlow and torch (default: usable cores)")
    parser.add_argument("--no-timm", action="store_true",
                        help="skip the PyTorch peers")
    parser.add_argument("--no-fused-bn", action="store_true",
                        help="skip `resnet50_fbn`: keras.applications ResNet50 "
                        "with keras_senet.layers.BatchNormalization, the fused BN "
                        "our builders use (the SE overhead at equal BN)")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--results-name", default="train_step",
                        help="results file stem in benchmarks/results")
    return parser


def parse_args(argv=None, parser=None):
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.repeats = 2, 64, 1
        if args.results_name == "train_step":
            args.results_name = "train_step_quick"
    for option in ("batch", "size", "repeats", "threads"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option} must be a positive integer. "
                         f"Received: --{option}={value}")
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in args.precisions if p not in PRECISIONS]
    if bad or not args.precisions:
        parser.error(f"--precisions must be among {', '.join(PRECISIONS)}. "
                     f"Received: --precisions={','.join(args.precisions)!r}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.no_timm or timm is None:
        args.no_timm = True
    return args


def build(name, keras, keras_senet, size, fused_bn=False):
    """A compiled model, or None for a fused-BN variant with nothing to fuse."""
    shape = (size, size, 3)
    if name == BASELINE:
        model = keras.applications.ResNet50(
            weights=None, input_shape=shape, classifier_activation=None
        )
    else:
        model = keras_senet.create_model(
            name, input_shape=shape, classifier_activation=None
        )
    if fused_bn:
        model = _util.with_fused_batchnorm(model)
        if model is None:
            return None
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


def torch_steps(names, precision, args):
    """name -> step callable for timm's models (PyTorch, same step)."""
    autocast = TIMM_PRECISIONS.get(precision, False)
    if args.no_timm or autocast is False:
        return {}
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((args.batch, 3, args.size, args.size), generator=generator)
    y = torch.randint(0, 1000, (args.batch,), generator=generator)
    steps = {}
    for name in names:
        model = timm.create_model(TIMM_PEERS[name], pretrained=False).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step(model=model, optimizer=optimizer, loss_fn=loss_fn):
            optimizer.zero_grad(set_to_none=True)
            if autocast is None:
                loss = loss_fn(model(x), y)
            else:
                with torch.autocast("cpu", dtype=getattr(torch, autocast)):
                    loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            return float(loss)

        steps["timm:" + TIMM_PEERS[name]] = step
    return steps


def run_precision(precision, args, libs, float32_step=None):
    tf, keras, keras_senet = libs
    keras.backend.clear_session()
    gc.collect()
    keras.config.set_dtype_policy(precision)
    try:
        names = [BASELINE] + [n for n in args.models if n != BASELINE]
        models = {n: build(n, keras, keras_senet, args.size) for n in names}
        if not args.no_fused_bn:
            # Our builders use the fused BN; ResNet50 with it too gives the
            # SE overhead at equal BN.
            models[BASELINE + "_fbn"] = build(
                BASELINE, keras, keras_senet, args.size, fused_bn=True
            )
    finally:
        keras.config.set_dtype_policy("float32")
    x = tf.random.stateless_uniform((args.batch, args.size, args.size, 3), seed=(1, 2))
    y = tf.random.stateless_uniform(
        (args.batch,), seed=(3, 4), maxval=1000, dtype=tf.int32
    )
    steps = {n: (lambda m=m: float(m.train_on_batch(x, y))) for n, m in models.items()}
    peers = [n for n in TIMM_PEERS if n in names or n == "timm_seresnet50"]
    steps.update(torch_steps(peers, precision, args))
    # First (tracing) step; a failing or hopeless precision stops here.
    for name, step in steps.items():
        loss = step()
        if loss != loss:  # NaN
            raise FloatingPointError(f"{name} under {precision}: loss is NaN")
    if float32_step is not None:
        second = {}
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            second[name] = time.perf_counter() - start
        slowest = max(second[n] / float32_step[n] for n in second if n in float32_step)
        if slowest > TOO_SLOW:
            return None, f"{slowest:.1f}x slower than float32 per step; not timed"
    times = _util.interleaved_timings(steps, args.repeats, warmup=0)
    return times, None


def train_ratios(img_s, precisions, models):
    """Model vs ResNet-50 (ours and timm's) per precision; the suffix names
    the precision (none for float32)."""
    ratios = {}
    for precision in precisions:
        suffix = "" if precision == "float32" else f"_{precision}"
        base = img_s.get((BASELINE, precision))
        base_fbn = img_s.get((BASELINE + "_fbn", precision))
        for name in models:
            short = name.replace("_32x4d", "")
            ratios[f"{short}_vs_resnet50{suffix}"] = _util.ratio(
                img_s.get((name, precision)), base)
            value = _util.ratio(img_s.get((name, precision)), base_fbn)
            if value is not None:  # at equal (fused) BN
                ratios[f"{short}_vs_resnet50_fbn{suffix}"] = value
        timm_base = img_s.get(("timm:resnet50", precision))
        for label, peer in (("timm_seresnet50", "seresnet50"),
                            ("timm_legacy_seresnet50", "legacy_seresnet50"),
                            ("timm_legacy_seresnext50", "legacy_seresnext50_32x4d")):
            value = _util.ratio(img_s.get(("timm:" + peer, precision)), timm_base)
            if value is not None:
                ratios[f"{label}_vs_resnet50{suffix}"] = value
        if precision != "float32" and "se_resnet50" in models:
            ratios[f"se_resnet50_{precision}_vs_float32"] = _util.ratio(
                img_s.get(("se_resnet50", precision)),
                img_s.get(("se_resnet50", "float32")),
            )
    return ratios


def main(argv=None):
    parser = build_parser()
    args = parse_args(argv, parser)
    threads = args.threads or _util.default_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    import tensorflow as tf

    _util.configure_tf_threads(tf, threads)
    import keras

    import keras_senet

    unknown = [m for m in args.models
               if m != BASELINE and m not in keras_senet.list_models()]
    if unknown:
        parser.error(f"--models names unknown models {unknown}; see "
                     "keras_senet.list_models(). "
                     f"Received: --models={','.join(args.models)!r}")
    info = _util.machine_info(threads=threads, loadavg_start=os.getloadavg())
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
        load = os.getloadavg()
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
                    "loadavg": load,
                }
            )
            print(f"{precision:15s} {name:32s} {medians[name]:8.3f} s/step "
                  f"{args.batch / medians[name]:8.2f} img/s  load {load[0]:.2f}",
                  flush=True)
    img_s = {(r["model"], r["precision"]): r["images_per_s"] for r in rows}
    ratios = train_ratios(img_s, args.precisions, args.models)
    info["loadavg_end"] = os.getloadavg()
    markdown = "\n\n".join(
        [
            "# Training step throughput (CPU)",
            _util.machine_markdown(info),
            f"Batch {args.batch}, {args.size}px, SGD momentum 0.9; Keras: "
            "model.train_on_batch on TensorFlow; `timm:*`: the same step on "
            "PyTorch (bfloat16 autocast for mixed_bfloat16). Medians of "
            "interleaved steps; load = 1-minute load average after the "
            "precision's steps.",
            _util.markdown_table(
                ["model", "precision", "s/step", "img/s", "load"],
                [(r["model"], r["precision"], r["median_step_s"],
                  r["images_per_s"], f"{r['loadavg'][0]:.2f}") for r in rows],
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
