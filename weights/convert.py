"""Converts a published PyTorch or safetensors SE checkpoint into a Keras
``.weights.h5``.

    python -m weights.convert se_resnet50-ce0d4300.pth --model se_resnet50 \
        --out se_resnet50.weights.h5
    python -m weights.convert model.safetensors --model seresnext50_32x4d \
        --out seresnext50.weights.h5
    python -m weights.convert --list

The checkpoint is read without torch (`keras_senet.state_dict`: PyTorch zip
or legacy files, safetensors), its names and shapes checked against the
model before any tensor data is read, and mapped strictly
(`keras_senet.convert`, in the model's layout: Cadene's / timm's legacy_*
names or timm's ResNet names). The output is written atomically and its
SHA-256 printed. Where torch and timm are installed, the logits of the
converted model are compared with timm's model loaded with the same
checkpoint (the parity report); ``--no-parity`` skips it. A missing file, a
file of another model or layout, or a bad argument prints one line and
exits with status 2.
"""

import argparse
import os
import sys

# torch and timm must be imported before TensorFlow in one process.
try:
    import timm
    import torch
except ImportError:  # the parity report is optional
    timm = torch = None

import numpy as np  # noqa: E402

from weights import reference  # noqa: E402

# The classifier's weight in each layout's state dicts.
_HEAD_KEYS = ("last_linear.weight", "fc.weight")


def _timm_name(model_name):
    names = getattr(reference, "TIMM_MODELS", reference.TIMM_NAMES)
    return names.get(model_name)


def convert(checkpoint, model_name, out):
    """Converts ``checkpoint`` for ``model_name``; returns (model, sha256).

    The model is built to the checkpoint's head (its number of classes, or
    none) once the file's names and shapes are known, before its data is
    read.
    """
    import keras_senet
    from keras_senet import convert as mapping
    from keras_senet import download
    from keras_senet import pretrained
    from keras_senet.models import _common

    layout = _common.checkpoint_layout(model_name)
    built = {}

    def check(shapes):
        head = next((shapes[k] for k in _HEAD_KEYS if k in shapes), None)
        model = keras_senet.create_model(
            model_name,
            weights=None,
            input_shape=(None, None, 3),
            classifier_activation=None,
            include_top=head is not None,
            classes=int(head[0]) if head is not None else 1000,
        )
        mapping.plan(model, shapes, layout=layout)
        built["model"] = model

    from keras_senet import state_dict as reader

    state_dict = reader.load_state_dict(checkpoint, check=check)
    model = built["model"]
    pretrained.check_dtypes(checkpoint, state_dict)
    mapping.load_state_dict_into(model, state_dict, layout=layout)
    with download.atomic_write(out) as tmp:
        model.save_weights(tmp)
    return model, download.sha256_file(out)


def _torch_state_dict(checkpoint):
    if checkpoint.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(checkpoint)
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def parity_report(model, checkpoint, model_name, size=224, batch=2, seed=0):
    """Max |logit difference| against timm's reference, or None without it."""
    timm_name = _timm_name(model_name)
    if torch is None or timm_name is None or model.output_shape[-1] is None:
        return None
    if len(model.output_shape) != 2:  # no classifier: nothing to compare
        return None
    ref = timm.create_model(timm_name, num_classes=model.output_shape[-1])
    ref.load_state_dict(_torch_state_dict(checkpoint))
    ref.eval()
    x = np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype("float32")
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = model.predict(np.transpose(x, (0, 2, 3, 1)), verbose=0)
    return float(np.abs(got - want).max()), float(np.abs(want).max())


def _one_line(error):
    """A conversion error as one line: its first line and the layout hint
    (which layouts exist and which models use them), not the full list."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    hint = [line for line in lines if line.startswith(("The checkpoint looks like", "Layout ", "Load it"))]
    problems = [line for line in lines[1:] if line not in hint]
    shown = problems[:3] + ([f"... ({len(problems) - 3} more)"] if len(problems) > 3 else [])
    return " ".join([lines[0]] + hint + (["First problems:"] + shown if shown and not hint else []))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m weights.convert",
        description=" ".join(__doc__.split("\n\n")[0].split()),
    )
    parser.add_argument(
        "checkpoint", nargs="?", help="a .pth / .pt / .bin (PyTorch) or .safetensors file"
    )
    parser.add_argument("--model", help="model name (see --list)")
    parser.add_argument("--out", help="output path ending in .weights.h5")
    parser.add_argument("--list", action="store_true", help="print the weights registry")
    parser.add_argument("--no-parity", action="store_true",
                        help="skip the comparison with timm")
    args = parser.parse_args(argv)

    if args.list:
        from keras_senet import zoo

        print(zoo.markdown_table())
        return 0
    if not (args.checkpoint and args.model and args.out):
        parser.error("CHECKPOINT, --model and --out are required (or --list)")
    if not args.out.endswith(".weights.h5"):
        parser.error(f"--out must end in .weights.h5. Received: --out {args.out}")
    if not os.path.isfile(args.checkpoint):
        parser.error(f"no checkpoint file at {args.checkpoint!r}")
    import keras_senet

    if args.model not in keras_senet.list_models():
        parser.error(
            f"unknown --model {args.model!r}; choose one of "
            f"{', '.join(keras_senet.list_models())}"
        )
    try:
        model, sha = convert(args.checkpoint, args.model, args.out)
    except (OSError, ValueError) as error:
        parser.error(_one_line(error))
    print(f"wrote {args.out}")
    print(f"sha256 {sha}")
    if not args.no_parity:
        report = parity_report(model, args.checkpoint, args.model)
        if report is None:
            print("parity: skipped (torch and timm are not installed, or no classifier)")
        else:
            diff, scale = report
            print(f"parity: max |logit diff| vs timm {_timm_name(args.model)} = "
                  f"{diff:.3g} (logits up to {scale:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
