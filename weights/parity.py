"""Measures logit parity with timm for every model with a timm counterpart.

    python -m weights.parity [--models se_resnet50 seresnet152d ...] [--size 224]

The models are the released SE networks (against timm's ``legacy_*`` ports)
and timm's modern SE-ResNet / SE-ResNeXt family (against timm's models of the
same names). For each model: timm's reference with random (conditioned)
weights is saved in PyTorch's legacy format (that of the 2017-2019 published
files), read back with our torch-free reader, converted with the model's
state-dict layout, and both models run on the same input. Prints
and saves (benchmarks/results/parity.{json,md}) the largest absolute logit
difference, next to the largest logit and to the reference's own float32 vs
float64 difference (its rounding noise).
"""

import argparse
import json
import os
import tempfile

import timm  # noqa: F401  (torch and timm before TensorFlow)
import torch

import numpy as np  # noqa: E402

from weights.reference import TIMM_MODELS  # noqa: E402
from weights.reference import conditioned_reference  # noqa: E402


def measure(name, size, batch=2, seed=0):
    import keras_senet
    from keras_senet import convert
    from keras_senet import torch_checkpoint

    reference = conditioned_reference(name, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.pth")
        torch.save(reference.state_dict(), path, _use_new_zipfile_serialization=False)
        state_dict = torch_checkpoint.load_state_dict(path)
    model = keras_senet.create_model(
        name, input_shape=(None, None, 3), classifier_activation=None
    )
    convert.load_state_dict_into(model, state_dict, layout=convert.layout_of(name))
    x = np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype("float32")
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
        want64 = reference.double()(torch.from_numpy(x).double()).numpy()
    got = model.predict(np.transpose(x, (0, 2, 3, 1)), verbose=0)
    return {
        "model": name,
        "size": size,
        "max_abs_diff": float(np.abs(got - want).max()),
        "max_abs_logit": float(np.abs(want).max()),
        "reference_fp32_noise": float(np.abs(want - want64).max()),
        "top1_agreement": float(np.mean(got.argmax(1) == want.argmax(1))),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m weights.parity", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--models",
        nargs="*",
        default=sorted(TIMM_MODELS),
        metavar="NAME",
        help="models to measure (default: every model with a timm counterpart)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=224,
        help="input side in pixels (even: timm's anti-aliased models need it)",
    )
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    unknown = [n for n in args.models if n not in TIMM_MODELS]
    if unknown:
        parser.error(
            f"--models: no timm counterpart for {', '.join(unknown)}; choose "
            f"from {', '.join(sorted(TIMM_MODELS))}"
        )
    if args.size < 32 or args.size % 2:
        parser.error(
            f"--size must be an even number of pixels >= 32. Received: {args.size}"
        )
    rows = []
    for name in args.models:
        row = measure(name, args.size)
        rows.append(row)
        print(
            f"{name}: max |diff| {row['max_abs_diff']:.2e} "
            f"(logits up to {row['max_abs_logit']:.2f}; timm's own fp32 noise "
            f"{row['reference_fp32_noise']:.1e})",
            flush=True,
        )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "parity.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = [
        f"| model | max abs logit diff ({args.size}px, float32) | max abs logit | timm fp32 vs fp64 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['max_abs_diff']:.1e} | {r['max_abs_logit']:.2f} | "
        f"{r['reference_fp32_noise']:.1e} |"
        for r in rows
    ]
    with open(os.path.join(args.out, "parity.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    worst = max(r["max_abs_diff"] for r in rows)
    print(f"worst_max_abs_diff={worst:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
