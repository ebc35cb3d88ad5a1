"""The benchmark scripts' logic, without timing anything: ratios, options,
the fused-BatchNormalization variant."""

import keras
import numpy as np
import pytest

from benchmarks import _util
from benchmarks import throughput
from benchmarks import train_step
from keras_senet.layers import BatchNormalization


def _row(model, candidate, batch, images_per_s):
    return {"model": model, "candidate": candidate, "batch": batch,
            "images_per_s": images_per_s}


def test_throughput_key_ratios_at_the_largest_batch_and_at_batch_1():
    rows = [
        _row("se_resnet50", "ours", 1, 18.0),
        _row("se_resnet50", "keras_app", 1, 20.0),
        _row("se_resnet50", "ours", 32, 23.0),
        _row("se_resnet50", "keras_app", 32, 25.0),
        _row("se_resnet50", "timm_se", 32, 9.0),
        _row("se_resnet50", "timm_base", 32, 10.0),
        _row("se_resnext50_32x4d", "ours", 32, 16.0),
        _row("se_resnext50_32x4d", "timm", 32, 8.0),
    ]
    ratios = throughput.key_ratios(rows)
    assert ratios["se_resnet50_vs_resnet50"] == pytest.approx(23 / 25)
    assert ratios["se_resnet50_vs_resnet50_b1"] == pytest.approx(18 / 20)
    assert ratios["timm_seresnet50_vs_resnet50"] == pytest.approx(0.9)
    assert "timm_seresnet50_vs_resnet50_b1" not in ratios  # not timed at batch 1
    assert ratios["se_resnext50_vs_timm"] == pytest.approx(2.0)
    line = _util.ratios_line(ratios)
    assert "se_resnet50_vs_resnet50=0.920" in line and "\n" not in line


def test_train_step_ratios_per_precision():
    img_s = {
        ("resnet50", "float32"): 5.0, ("se_resnet50", "float32"): 4.0,
        ("resnet50_fbn", "float32"): 2.5,
        ("resnet50", "mixed_bfloat16"): 8.0, ("se_resnet50", "mixed_bfloat16"): 6.0,
        ("timm:resnet50", "float32"): 2.0, ("timm:seresnet50", "float32"): 1.5,
    }
    ratios = train_step.train_ratios(img_s, ["float32", "mixed_bfloat16"],
                                     ["se_resnet50"])
    assert ratios["se_resnet50_vs_resnet50"] == pytest.approx(0.8)
    assert ratios["se_resnet50_vs_resnet50_fbn"] == pytest.approx(1.6)  # at equal BN
    assert ratios["se_resnet50_vs_resnet50_mixed_bfloat16"] == pytest.approx(0.75)
    assert "se_resnet50_vs_resnet50_fbn_mixed_bfloat16" not in ratios  # not timed
    assert ratios["timm_seresnet50_vs_resnet50"] == pytest.approx(0.75)
    assert ratios["se_resnet50_mixed_bfloat16_vs_float32"] == pytest.approx(1.5)


@pytest.mark.parametrize(
    "module, argv, message",
    [
        (throughput, ["--batch", "0"], "--batch"),
        (throughput, ["--batch", "a,b"], "--batch"),
        (throughput, ["--repeats", "0"], "--repeats"),
        (train_step, ["--precisions", "float64"], "--precisions"),
        (train_step, ["--batch", "-1"], "--batch"),
    ],
)
def test_bad_options_exit_2_with_one_line(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"python -m benchmarks.{module.__name__.split('.')[-1]}: error:")
    assert message in err[-1]


def test_usage_names_the_module():
    for module in (throughput, train_step):
        usage = module.build_parser().format_usage()
        assert f"python -m benchmarks.{module.__name__.split('.')[-1]}" in usage


def test_with_fused_batchnorm_keeps_weights_and_outputs():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in model.get_weights()])
    fused = _util.with_fused_batchnorm(model)
    assert type(fused.get_layer("bn")) is BatchNormalization
    assert type(model.get_layer("bn")) is keras.layers.BatchNormalization
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(fused.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    assert _util.with_fused_batchnorm(fused) is None  # nothing left to fuse
