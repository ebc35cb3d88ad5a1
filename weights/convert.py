"""Converts a published PyTorch SE checkpoint into a Keras ``.weights.h5``.

    python -m weights.convert se_resnet50-ce0d4300.pth --model se_resnet50 \
        --out se_resnet50.weights.h5
    python -m weights.convert --list

The checkpoint is read without torch (`keras_senet.torch_checkpoint`) and
mapped strictly (`keras_senet.convert`). The output is written atomically and
its SHA-256 printed. Where torch and timm are installed, the logits of the
converted model are compared with timm's ``legacy_*`` model loaded with the
same checkpoint (the parity report); ``--no-parity`` skips it.
"""

import argparse
import sys

# torch and timm must be imported before TensorFlow in one process.
try:
    import timm
    import torch
except ImportError:  # the parity report is optional
    timm = torch = None

import numpy as np  # noqa: E402

from weights.reference import TIMM_NAMES  # noqa: E402


def convert(checkpoint, model_name, out):
    """Converts ``checkpoint`` for ``model_name``; returns (model, sha256)."""
    import keras_senet
    from keras_senet import convert as mapping
    from keras_senet import download
    from keras_senet import torch_checkpoint

    state_dict = torch_checkpoint.load_state_dict(checkpoint)
    model = keras_senet.create_model(
        model_name,
        weights=None,
        input_shape=(None, None, 3),
        classifier_activation=None,
        classes=int(state_dict.get("last_linear.weight", np.zeros((1000,))).shape[0]),
    )
    mapping.load_state_dict_into(model, state_dict)
    with download.atomic_write(out) as tmp:
        model.save_weights(tmp)
    return model, download.sha256_file(out)


def parity_report(model, checkpoint, model_name, size=224, batch=2, seed=0):
    """Max |logit difference| against timm's reference, or None without it."""
    if torch is None or model_name not in TIMM_NAMES:
        return None
    reference = timm.create_model(TIMM_NAMES[model_name], num_classes=model.output_shape[-1])
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    reference.load_state_dict(state_dict)
    reference.eval()
    x = np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype("float32")
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    got = model.predict(np.transpose(x, (0, 2, 3, 1)), verbose=0)
    return float(np.abs(got - want).max()), float(np.abs(want).max())


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m weights.convert", description=__doc__.split("\n")[0]
    )
    parser.add_argument("checkpoint", nargs="?", help="a .pth / .pt file")
    parser.add_argument("--model", help="model name (see --list)")
    parser.add_argument("--out", help="output path ending in .weights.h5")
    parser.add_argument("--list", action="store_true", help="print the registry")
    parser.add_argument("--no-parity", action="store_true",
                        help="skip the comparison with timm")
    args = parser.parse_args(argv)

    from keras_senet import zoo

    if args.list:
        print(zoo._table())
        return 0
    if not (args.checkpoint and args.model and args.out):
        parser.error("CHECKPOINT, --model and --out are required (or --list)")
    if not args.out.endswith(".weights.h5"):
        parser.error(f"--out must end in .weights.h5. Received: --out {args.out}")
    model, sha = convert(args.checkpoint, args.model, args.out)
    print(f"wrote {args.out}")
    print(f"sha256 {sha}")
    if not args.no_parity:
        report = parity_report(model, args.checkpoint, args.model)
        if report is None:
            print("parity: skipped (torch and timm are not installed)")
        else:
            diff, scale = report
            print(f"parity: max |logit diff| vs timm {TIMM_NAMES[args.model]} = "
                  f"{diff:.3g} (logits up to {scale:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
