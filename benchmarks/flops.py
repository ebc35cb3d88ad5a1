"""Analytical FLOPs of every builder, and how close inference gets to peak.

    python -m benchmarks.flops [--models ...] [--repeats N] [--quick]

`count_flops(model)` returns multiply-adds (MACs; the SE paper's "GFLOPs"
are multiply-adds too) per image, summed over the layers:

- Conv2D (any subclass, incl. keras_senet's GroupConv2D), Conv1D/3D:
  ``output positions * filters * kernel taps * in_channels / groups``;
- DepthwiseConv2D: ``output positions * in_channels * multiplier * taps``;
  SeparableConv2D: its depthwise plus its pointwise part;
- Dense: ``in_features * units`` per output position;
- SqueezeExcite: its two FCs (``C * C/r + C/r * C``) and, unless
  ``include_se_scale=False``, the rescale (one multiply per element, C*H*W).

Not counted: biases, BatchNorm, activations, pooling, additions, padding
(each well under 1 % of these networks). `flops_breakdown` gives the parts.

The script counts every registered model at its default size next to the
paper's GFLOPs (REFERENCE.md), the plain base networks (keras.applications
where one exists; otherwise our count minus the SE blocks) and, where torch
and timm are installed, the same count on timm's counterpart (`timm_macs`:
timm's ``legacy_*`` ports, and timm's modern SE-ResNet/ResNeXt family of the
same names; it equals ours without the SE rescale), measures this
machine's dense fp32 matmul peak in TensorFlow (same threads) and the
fraction of it that SE-ResNet-50 inference reaches (``2 * MACs * img/s /
peak``), and writes benchmarks/results/flops.{json,md}.
"""

import argparse
import gc
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _util  # noqa: E402

# registry name -> (default size, paper GFLOPs base, paper GFLOPs SE,
#                   keras.applications base network)
PAPER = {
    "se_resnet50": (224, 3.86, 3.87, "ResNet50"),
    "se_resnet101": (224, 7.58, 7.60, "ResNet101"),
    "se_resnet152": (224, 11.30, 11.32, "ResNet152"),
    "se_resnext50_32x4d": (224, 4.24, 4.25, None),
    "se_resnext101_32x4d": (224, 7.99, 8.00, None),
    "se_bn_inception": (224, 2.03, 2.04, None),
    "se_inception_v3": (299, None, None, "InceptionV3"),
    "se_inception_resnet_v2": (299, 11.75, 11.76, "InceptionResNetV2"),
}
DEFAULT_SIZE = 224


def _spatial_size(shape, data_format):
    dims = shape[1:-1] if data_format == "channels_last" else shape[2:]
    if any(d is None for d in dims):
        raise ValueError(
            "count_flops needs fixed spatial sizes; build the model with a "
            f"full `input_shape`. Received a layer output shape {tuple(shape)}"
        )
    return math.prod(dims)


def _channels(shape, data_format):
    return shape[-1] if data_format == "channels_last" else shape[1]


def _layer_flops(layer, keras, SqueezeExcite, include_se_scale):
    """``{part: MACs per image}`` of one layer (empty if it counts zero)."""
    if isinstance(layer, SqueezeExcite):
        parts = {"se_fc": 2 * layer.channels * layer.hidden_channels}
        if include_se_scale:
            # A fused SE tail also takes the shortcut: its first input is
            # the feature map that the gates rescale.
            x = layer.input
            shape = (x[0] if isinstance(x, (list, tuple)) else x).shape
            parts["se_scale"] = math.prod(shape[1:])
        return parts
    if isinstance(layer, keras.layers.SeparableConv2D):
        fmt = layer.data_format
        in_shape, out_shape = layer.input.shape, layer.output.shape
        positions = _spatial_size(out_shape, fmt)
        cin = _channels(in_shape, fmt)
        taps = math.prod(layer.kernel_size)
        depthwise = positions * cin * layer.depth_multiplier * taps
        pointwise = positions * cin * layer.depth_multiplier * layer.filters
        return {"conv": depthwise + pointwise}
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        fmt = layer.data_format
        positions = _spatial_size(layer.output.shape, fmt)
        cin = _channels(layer.input.shape, fmt)
        taps = math.prod(layer.kernel_size)
        return {"conv": positions * cin * layer.depth_multiplier * taps}
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D,
                          keras.layers.Conv3D)):
        fmt = layer.data_format
        positions = _spatial_size(layer.output.shape, fmt)
        cin = _channels(layer.input.shape, fmt)
        taps = math.prod(layer.kernel_size)
        return {"conv": positions * layer.filters * taps * cin // layer.groups}
    if isinstance(layer, keras.layers.Dense):
        in_shape = layer.input.shape
        positions = math.prod(in_shape[1:-1]) if len(in_shape) > 2 else 1
        return {"dense": positions * in_shape[-1] * layer.units}
    return {}


def flops_breakdown(model, include_se_scale=True):
    """Multiply-adds per image by part: ``conv``, ``dense``, ``se_fc``,
    ``se_scale`` (see the module docstring), for a functional ``model``
    with a fixed input size; nested functional models are descended into."""
    import keras

    from keras_senet.layers import SqueezeExcite

    if not isinstance(model, keras.Model):
        raise ValueError(
            f"count_flops expects a keras.Model. Received: model={model!r}"
        )
    totals = {"conv": 0, "dense": 0, "se_fc": 0, "se_scale": 0}
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
            continue
        for part, value in _layer_flops(
            layer, keras, SqueezeExcite, include_se_scale
        ).items():
            totals[part] += int(value)
    return totals


def count_flops(model, include_se_scale=True):
    """Multiply-adds per image of ``model`` (an int); see the module
    docstring for what is counted."""
    return sum(flops_breakdown(model, include_se_scale).values())


def timm_macs(timm_name, size, **timm_kwargs):
    """Multiply-adds per image of timm's model ``timm_name`` at ``size`` px:
    its Conv2d and Linear layers (the SE FCs are 1x1 convolutions), from the
    output shapes of a forward pass on torch's meta device (no weights, no
    arithmetic). None when torch or timm is missing."""
    try:
        import timm
        import torch
    except ImportError:
        return None
    model = timm.create_model(timm_name, device="meta", **timm_kwargs)
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            taps = math.prod(module.kernel_size)
            per_output = taps * module.in_channels // module.groups
            total += output.numel() // output.shape[0] * per_output
        else:  # Linear
            total += output.numel() // output.shape[0] * module.in_features

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.empty(1, model.in_chans, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return total


def measure_peak_and_inference(tf, keras, model_fn, macs, args):
    """fp32 matmul peak (FLOP/s) and SE-ResNet-50 inference (img/s), timed
    interleaved in one run."""
    n = args.matmul_size
    a = tf.random.stateless_uniform((n, n), seed=(1, 2))
    b = tf.random.stateless_uniform((n, n), seed=(3, 4))
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    model = model_fn()
    x = tf.random.stateless_uniform(
        (args.batch, args.size, args.size, 3), seed=(5, 6)
    )
    forward = {
        "ours": tf.function(lambda t: model(t, training=False)),
        "ours_xla": tf.function(lambda t: model(t, training=False), jit_compile=True),
    }
    candidates = {"matmul": lambda: matmul().numpy()}
    for key, fn in forward.items():
        candidates[key] = lambda fn=fn: fn(x).numpy()
    times = _util.interleaved_timings(candidates, args.repeats, warmup=1)
    peak = 2 * n**3 / _util.median(times["matmul"])
    img_s = {k: args.batch / _util.median(times[k]) for k in forward}
    best = max(img_s, key=img_s.get)
    fraction = 2 * macs * img_s[best] / peak
    return {
        "matmul_size": n,
        "matmul_peak_gflops": peak / 1e9,
        "se_resnet50_batch": args.batch,
        "se_resnet50_size": args.size,
        "se_resnet50_images_per_s": img_s,
        "se_resnet50_best": best,
        "se_resnet50_gflops_achieved": 2 * macs * img_s[best] / 1e9,
        "fraction_of_peak": fraction,
        "times_s": times,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.flops", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--models", help="comma-separated registry names")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--results-name", default="flops")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or "se_resnet50,se_resnext26_32x4d"
        args.repeats, args.batch, args.size, args.matmul_size = 1, 2, 96, 1024
        if args.results_name == "flops":
            args.results_name = "flops_quick"
    return args


def main(argv=None):
    args = parse_args(argv)
    try:  # timm's counts; torch and timm must come before TensorFlow
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        pass
    import tensorflow as tf

    threads = args.threads or _util.default_threads()
    _util.configure_tf_threads(tf, threads)
    import keras

    import keras_senet
    from weights.reference import TIMM_MODELS

    available = keras_senet.list_models()
    names = (
        [n.strip() for n in args.models.split(",") if n.strip()]
        if args.models
        else available
    )
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"--models names unknown models {unknown}. Available: {available}. "
            f"Received: --models={args.models!r}"
        )
    rows = []
    for name in names:
        size, paper_base, paper_se, app = PAPER.get(
            name, (DEFAULT_SIZE, None, None, None)
        )
        start = time.perf_counter()
        model = keras_senet.create_model(name, input_shape=(size, size, 3))
        parts = flops_breakdown(model)
        del model
        app_gmacs = None
        if app:
            keras.backend.clear_session()
            base = getattr(keras.applications, app)(
                weights=None, input_shape=(size, size, 3)
            )
            app_gmacs = count_flops(base) / 1e9
            del base
        keras.backend.clear_session()
        gc.collect()
        total = sum(parts.values())
        se = parts["se_fc"] + parts["se_scale"]
        timm_count = (
            timm_macs(TIMM_MODELS[name], size) if name in TIMM_MODELS else None
        )
        rows.append(
            {
                "model": name,
                "size": size,
                "gmacs": total / 1e9,
                "gmacs_without_se": (total - se) / 1e9,
                "se_fc_gmacs": parts["se_fc"] / 1e9,
                "se_scale_gmacs": parts["se_scale"] / 1e9,
                "keras_app_base": app,
                "keras_app_base_gmacs": app_gmacs,
                "timm_model": TIMM_MODELS.get(name),
                "timm_gmacs_without_se_scale": (
                    None if timm_count is None else timm_count / 1e9
                ),
                "equals_timm": (
                    None
                    if timm_count is None
                    else total - parts["se_scale"] == timm_count
                ),
                "paper_base_gflops": paper_base,
                "paper_se_gflops": paper_se,
                "se_vs_paper": _util.ratio(total / 1e9, paper_se),
                "base_vs_paper": _util.ratio(app_gmacs or (total - se) / 1e9,
                                             paper_base),
            }
        )
        print(f"{name:24s} {total / 1e9:7.3f} GMACs (without SE "
              f"{(total - se) / 1e9:.3f}; paper {paper_base} -> {paper_se}; "
              f"{app or 'base'} {app_gmacs}; timm "
              f"{None if timm_count is None else timm_count / 1e9}) "
              f"[{time.perf_counter() - start:.0f}s]",
              flush=True)

    macs50 = count_flops(
        keras_senet.create_model("se_resnet50", input_shape=(args.size, args.size, 3))
    )
    keras.backend.clear_session()
    peak = measure_peak_and_inference(
        tf,
        keras,
        lambda: keras_senet.create_model(
            "se_resnet50", input_shape=(args.size, args.size, 3)
        ),
        macs50,
        args,
    )
    info = _util.machine_info(threads=threads)
    ratios = {
        "se_resnet50_fraction_of_matmul_peak": peak["fraction_of_peak"],
        "matmul_peak_gflops": peak["matmul_peak_gflops"],
    }
    for row in rows:
        if row["se_vs_paper"]:
            ratios[f"{row['model']}_gmacs_vs_paper"] = row["se_vs_paper"]
    markdown = "\n\n".join(
        [
            "# FLOPs (multiply-adds per image) and fraction of matmul peak",
            _util.machine_markdown(info),
            "Counted: convolutions (incl. groups), dense layers, the SE "
            "blocks' two FCs and their rescale multiply. Not counted: biases, "
            "BN, activations, pooling, adds. timm: the same count (without "
            "the SE rescale) on timm's counterpart, from hooks on its Conv2d "
            "and Linear layers.",
            _util.markdown_table(
                ["model", "size", "GMACs", "without SE", "SE FCs", "SE scale",
                 "keras.applications base", "paper base", "paper SE",
                 "timm (without SE scale)"],
                [
                    (r["model"], r["size"], r["gmacs"], r["gmacs_without_se"],
                     r["se_fc_gmacs"], r["se_scale_gmacs"],
                     None if r["keras_app_base"] is None
                     else f"{r['keras_app_base']} {r['keras_app_base_gmacs']:.3f}",
                     r["paper_base_gflops"], r["paper_se_gflops"],
                     None if r["timm_gmacs_without_se_scale"] is None
                     else f"{r['timm_model']} {r['timm_gmacs_without_se_scale']:.3f}"
                     + ("" if r["equals_timm"] else " (differs)"))
                    for r in rows
                ],
            ),
            f"Dense fp32 matmul ({peak['matmul_size']}^2, TensorFlow, "
            f"{threads} threads): {peak['matmul_peak_gflops']:.1f} GFLOP/s. "
            f"SE-ResNet-50 inference (batch {args.batch}, {args.size}px, best of "
            f"{peak['se_resnet50_images_per_s']}): "
            f"{peak['se_resnet50_gflops_achieved']:.1f} GFLOP/s = "
            f"{100 * peak['fraction_of_peak']:.1f} % of peak.",
        ]
    )
    payload = {"machine": info, "args": vars(args), "models": rows,
               "peak": peak, "ratios": ratios}
    paths = _util.write_results(args.results_name, payload, markdown)
    print("wrote", *paths)
    print(_util.ratios_line(ratios))
    return payload


if __name__ == "__main__":
    main()
