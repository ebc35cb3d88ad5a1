"""The table of every loadable checkpoint, with parameters and GMACs.

    python -m benchmarks.checkpoints [--models PATTERN]

For each record of `keras_senet.zoo` (``list_models(pretrained=True)``):
the reported accuracy at its training size and at its test size (timm's
figures, from the record), the trainable parameters of the model with the
checkpoint's head (1000 or 11,821 classes) and its multiply-adds per image
(`benchmarks.flops.count_flops`) at the size it is evaluated at, and its
sources. Builds each model without weights (nothing is downloaded). Prints
the markdown table (the README's) and writes
benchmarks/results/checkpoints.{json,md}.
"""

import argparse
import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _util  # noqa: E402


def _accuracy(record, size):
    result = record.result_at(size) if size else None
    if result is None:
        return "-"
    top5 = "-" if result.top5 is None else f"{result.top5:.2f}"
    return f"{result.top1:.2f} / {top5} @ {size}"


def measure(records):
    """One row per record: parameters and GMACs at its evaluation size."""
    import keras

    import keras_senet
    from benchmarks.flops import count_flops
    from keras_senet import zoo

    cache, rows = {}, []
    for record in records:
        key = (record.model, record.eval_size, record.num_classes)
        if key not in cache:
            model = keras_senet.create_model(
                record.model, weights=None, classes=record.num_classes,
                input_shape=(record.eval_size, record.eval_size, 3),
            )
            params = sum(int(v.numpy().size) for v in model.trainable_weights)
            cache[key] = (params, count_flops(model) / 1e9)
            del model
            keras.backend.clear_session()
            gc.collect()
        params, gmacs = cache[key]
        rows.append({
            "name": record.name,
            "classes": record.num_classes,
            "train": _accuracy(record, record.input_size),
            "test": _accuracy(record, record.test_input_size),
            "eval_size": record.eval_size,
            "params": params,
            "gmacs": gmacs,
            "sources": zoo.sources_text(record),
        })
        print(f"{record.name:45s} {params:12,d} {gmacs:7.2f} GMACs @ {record.eval_size}",
              flush=True)
    return rows


def to_markdown(rows):
    header = ("| name.tag | top-1 / top-5 @ train size | top-1 / top-5 @ test size "
              "| parameters | GMACs (eval size) | sources |")
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        name = r["name"] + (f" ({r['classes']:,} classes)" if r["classes"] != 1000 else "")
        lines.append(
            f"| `{name}` | {r['train']} | {r['test']} | {r['params']:,} "
            f"| {r['gmacs']:.2f} ({r['eval_size']}) | {r['sources']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.checkpoints", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--models", default=None,
                        help="glob over model.tag names (default: all)")
    parser.add_argument("--results-name", default="checkpoints")
    args = parser.parse_args(argv)
    from keras_senet import zoo

    names = zoo.list_weights(args.models)
    if not names:
        parser.error(f"--models matches no checkpoint. Received: --models={args.models!r}")
    # The registry's order: each model's default tag (timm's) first.
    records = [record for name, record in zoo.REGISTRY.items() if name in names]
    rows = measure(records)
    table = to_markdown(rows)
    print(table)
    _util.write_results(args.results_name, {"rows": rows},
                        "# Every loadable checkpoint\n\n" + table + "\n")


if __name__ == "__main__":
    main()
