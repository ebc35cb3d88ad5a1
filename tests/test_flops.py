"""The analytical FLOP counter: hand-computed small models, and the SE
paper's GFLOPs for (SE-)ResNet-50."""

import keras
import pytest

from benchmarks import _util
from benchmarks.flops import count_flops
from benchmarks.flops import flops_breakdown
from keras_senet.conv import GroupConv2D
from keras_senet.layers import SqueezeExcite


def test_hand_built_model():
    inputs = keras.Input((10, 10, 8))
    # 10*10 positions * 16 filters * 9 taps * 8 inputs
    x = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    # 4 groups: 10*10 * 16 * 9 * (16/4)
    x = GroupConv2D(16, 3, padding="same", groups=4)(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    # stride 2 on 12x12, "valid": 5x5 positions * 32 * 1 tap * 16
    x = keras.layers.Conv2D(32, 1, strides=2)(x)
    x = keras.layers.Conv2D(32, 3, strides=2, groups=8)(x)  # 2x2 * 32 * 9 * 4
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    # depthwise: 2x2 * 32 * 2 * 9
    x = SqueezeExcite(reduction=4)(x)  # FCs 64*16*2; scale 2*2*64
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(7)(x)  # 64 * 7
    model = keras.Model(inputs, x)
    parts = flops_breakdown(model)
    conv = (
        10 * 10 * 16 * 9 * 8
        + 10 * 10 * 16 * 9 * 4
        + 6 * 6 * 32 * 16
        + 2 * 2 * 32 * 9 * 4
        + 2 * 2 * 32 * 2 * 9
    )
    assert parts == {
        "conv": conv,
        "dense": 64 * 7,
        "se_fc": 2 * 64 * 16,
        "se_scale": 2 * 2 * 64,
    }
    assert count_flops(model) == sum(parts.values())
    assert count_flops(model, include_se_scale=False) == sum(parts.values()) - 256


def test_dense_on_sequence_and_nested_model():
    inner_in = keras.Input((5, 3))
    inner = keras.Model(inner_in, keras.layers.Dense(4)(inner_in))
    inputs = keras.Input((5, 3))
    x = inner(inputs)
    x = keras.layers.Conv1D(6, 2)(x)  # 4 positions * 6 * 2 taps * 4
    model = keras.Model(inputs, x)
    assert count_flops(model) == 5 * 3 * 4 + 4 * 6 * 2 * 4


def test_variable_size_and_bad_argument_are_rejected():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="fixed spatial sizes"):
        count_flops(model)
    with pytest.raises(ValueError, match="Received: model="):
        count_flops("resnet50")


@pytest.mark.parametrize(
    "build, paper_gflops",
    [
        (lambda: __import__("keras_senet").SEResNet50(), 3.87),
        (lambda: keras.applications.ResNet50(weights=None), 3.86),
    ],
    ids=["se_resnet50", "resnet50"],
)
def test_resnet50_matches_paper(build, paper_gflops):
    gmacs = count_flops(build()) / 1e9
    assert gmacs == pytest.approx(paper_gflops, rel=0.02)


def test_se_overhead_matches_paper_difference():
    import keras_senet

    parts = flops_breakdown(keras_senet.SEResNet50())
    se = (parts["se_fc"] + parts["se_scale"]) / 1e9
    # Paper: 3.86 -> 3.87 GFLOPs, i.e. about 0.01 (rounded to 2 decimals).
    assert 0.002 < se < 0.015
    # The FCs are the SE parameters: 28,088,024 - 25,557,032 (timm counts)
    # minus their biases; one multiply-add per weight.
    assert parts["se_fc"] == pytest.approx(28_088_024 - 25_557_032, rel=0.01)


def test_util_helpers(tmp_path):
    times = {"a": [], "b": []}
    order = []
    candidates = {
        "a": lambda: order.append("a"),
        "b": lambda: order.append("b"),
    }
    times = _util.interleaved_timings(candidates, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert _util.median([3.0, 1.0, 2.0]) == 2.0
    paths = _util.write_results(
        "x", {"k": 1}, _util.markdown_table(["h"], [(1.5,), (None,)]),
        results_dir=str(tmp_path),
    )
    assert open(paths[0]).read().strip() == '{\n  "k": 1\n}'
    assert open(paths[1]).read().splitlines() == ["| h |", "|---|", "| 1.5 |", "| - |"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.md"]
    assert _util.ratios_line({"r": 0.5, "s": None}) == "r=0.500 s=n/a"


@pytest.mark.parametrize(
    "name, timm_name, one_block",
    [
        # timm's modern family: deep stems, average-pool shortcuts and the
        # anti-aliasing pools (which move a block's 3x3 to full resolution).
        ("seresnextaa101d_32x8d", "seresnextaa101d_32x8d", True),
        ("seresnext26t_32x4d", "seresnext26t_32x4d", False),
        # A released model against timm's legacy_* port.
        ("se_resnext26_32x4d", "legacy_seresnext26_32x4d", False),
    ],
)
def test_counts_equal_timm_models_counted_on_the_meta_device(
    name, timm_name, one_block
):
    """Our count without the SE rescale equals the count of timm's model
    (from hooks on its Conv2d / Linear layers, meta device), at an odd size."""
    pytest.importorskip("timm")
    from benchmarks.flops import timm_macs
    from keras_senet.models import senet

    size = 224 if senet.VARIANTS[name].get("aa") else 225
    config = dict(senet.VARIANTS[name])
    config.pop("layout", None)
    config.pop("dropout_rate", None)
    layers = (1, 1, 1, 1) if one_block else config["layers"]
    config["layers"] = layers
    with keras.StatelessScope(initialize_variables=False):
        inputs = keras.Input((size, size, 3))
        x = senet.senet_features(inputs, **config)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(1000)(x))
    ours = count_flops(model, include_se_scale=False)
    assert ours == timm_macs(timm_name, size, layers=layers)
    # The aa blocks' 3x3 convolutions run at stride 1 (4x the positions).
    if senet.VARIANTS[name].get("aa"):
        plain = timm_macs("seresnext101d_32x8d", size, layers=layers)
        assert ours > plain
