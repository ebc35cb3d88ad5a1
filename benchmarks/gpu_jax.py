"""Training images/s on a GPU with Keras on the JAX backend (no TensorFlow).

    python -m benchmarks.gpu_jax [--models se_resnet50,se_resnext50_32x4d,...]
                                 [--batches 256,192,128,64] [--steps 20]
                                 [--quick] [--cpu]

For a device machine with JAX (and PyTorch) built for CUDA but without
TensorFlow: ``KERAS_BACKEND=jax`` is set before Keras is imported and
TensorFlow is never imported (checked at the end). Each model trains under
``mixed_bfloat16`` (SGD momentum 0.9, sparse categorical cross-entropy, XLA
via Keras' JAX trainer) on synthetic data already on the device; batch
sizes are tried largest first and the first that fits (no out-of-memory
error) is timed: ``--steps`` steps after ``--warmup`` ones, images/s from
the total time (the last loss is fetched, so the device work has finished).
Results are compared with NVIDIA's published A100 AMP training figures
(REFERENCE.md): 975 img/s SE-ResNeXt-101-32x4d, 2,375 img/s ResNet-50
(v1.5, not SE; the closest anchor for SE-ResNet-50).

``--cpu --quick`` runs the same logic on the CPU (tiny images and batches)
to check the script where no GPU is present. Writes
benchmarks/results/gpu_jax.{json,md} (``gpu_jax_quick`` with --quick).
"""

import argparse
import os
import sys
import time

# Published A100 AMP training images/s (REFERENCE.md, "Throughput anchors").
NVIDIA_A100_AMP = {
    "se_resnext101_32x4d": (975, "NVIDIA TF SE-ResNeXt-101-32x4d, A100 AMP+XLA"),
    "se_resnet50": (2375, "NVIDIA TF ResNet-50 v1.5 (no SE), A100 AMP"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_jax", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--models", default="se_resnet50,se_resnext50_32x4d,se_resnext101_32x4d"
    )
    parser.add_argument("--batches", default="512,384,256,192,128,64",
                        help="batch sizes to try, largest first")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--cpu", action="store_true", help="run JAX on the CPU")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--results-name", default="gpu_jax")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.size, args.steps, args.warmup = "4,2", 64, 2, 1
        if args.results_name == "gpu_jax":
            args.results_name = "gpu_jax_quick"
    try:
        args.batches = sorted({int(b) for b in args.batches.split(",")}, reverse=True)
        if min(args.batches) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(
            "--batches must be positive integers separated by commas. "
            f"Received: --batches={args.batches!r}"
        ) from None
    return args


def _is_out_of_memory(error):
    text = f"{type(error).__name__} {error}".lower()
    return any(s in text for s in ("resource_exhausted", "out of memory", "oom"))


def train_images_per_s(name, batch, args, keras, keras_senet, jax, jnp):
    """Images/s of ``args.steps`` training steps at ``batch``."""
    keras.backend.clear_session()
    keras.config.set_dtype_policy(args.precision)
    try:
        model = keras_senet.create_model(
            name, input_shape=(args.size, args.size, 3), classifier_activation=None
        )
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    key = jax.random.PRNGKey(0)
    x = jax.random.uniform(key, (batch, args.size, args.size, 3), jnp.float32)
    y = jax.random.randint(key, (batch,), 0, 1000)
    x, y = jax.device_put(x), jax.device_put(y)
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = model.train_on_batch(x, y)
    loss = float(loss)  # waits for the device
    seconds = time.perf_counter() - start
    if loss != loss:
        raise FloatingPointError(f"{name}: loss is NaN at batch {batch}")
    return batch * args.steps / seconds, loss


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = "jax"
    if args.cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import jax.numpy as jnp
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(
            "Keras was imported before KERAS_BACKEND=jax could take effect; "
            "run this script as `python -m benchmarks.gpu_jax`. "
            f"Received backend: {keras.backend.backend()!r}"
        )
    import keras_senet

    from benchmarks import _util

    devices = [str(d) for d in jax.devices()]
    if not args.cpu and jax.default_backend() == "cpu":
        print("warning: JAX found no GPU; pass --cpu to run on the CPU on purpose",
              flush=True)
    rows, ratios = [], {}
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        tried = []
        for batch in args.batches:
            try:
                img_s, loss = train_images_per_s(
                    name, batch, args, keras, keras_senet, jax, jnp
                )
            except Exception as error:
                if _is_out_of_memory(error):
                    tried.append(batch)
                    print(f"{name}: batch {batch} does not fit", flush=True)
                    continue
                raise
            anchor, anchor_note = NVIDIA_A100_AMP.get(name, (None, None))
            rows.append({
                "model": name, "batch": batch, "size": args.size,
                "precision": args.precision, "images_per_s": img_s,
                "final_loss": loss, "batches_out_of_memory": tried,
                "nvidia_a100_amp": anchor, "nvidia_note": anchor_note,
                "vs_nvidia_a100": _util.ratio(img_s, anchor),
            })
            ratios[f"{name}_vs_nvidia_a100"] = _util.ratio(img_s, anchor)
            print(f"{name}: batch {batch}: {img_s:.1f} img/s "
                  f"(NVIDIA A100 AMP {anchor})", flush=True)
            break
        else:
            print(f"{name}: no batch size of {args.batches} fits", flush=True)
    tf_imported = "tensorflow" in sys.modules
    info = _util.machine_info(
        jax_backend=jax.default_backend(), devices=devices,
        tensorflow_imported=tf_imported,
    )
    markdown = "\n\n".join([
        "# Training throughput on the JAX backend (GPU)",
        _util.machine_markdown(info) + f", devices={devices}",
        _util.markdown_table(
            ["model", "batch", "precision", "img/s", "NVIDIA A100 AMP", "ratio"],
            [(r["model"], r["batch"], r["precision"], r["images_per_s"],
              r["nvidia_a100_amp"], r["vs_nvidia_a100"]) for r in rows],
        ),
        "NVIDIA's figures: A100, AMP, TensorFlow; the ResNet-50 one is v1.5 "
        "without SE.",
    ])
    payload = {"machine": info, "args": vars(args), "results": rows, "ratios": ratios}
    paths = _util.write_results(args.results_name, payload, markdown)
    print("wrote", *paths)
    if tf_imported:
        raise RuntimeError("tensorflow was imported; this script must run without it")
    print(_util.ratios_line(ratios))
    return payload


if __name__ == "__main__":
    main()
