"""feature_extractor / feature_info: levels, strides, weights, errors."""

import keras
import numpy as np
import pytest

from keras_senet import create_model
from keras_senet.features import feature_extractor
from keras_senet.features import feature_info

LEVELS = ("C2", "C3", "C4", "C5")


def _run(model, x):
    """One eager forward pass (no tf.function tracing: fast for one batch)."""
    return keras.tree.map_structure(
        keras.ops.convert_to_numpy, model(x, training=False)
    )


@pytest.mark.parametrize("height, width", [(64, 64), (96, 128)])
def test_se_resnet_levels_have_strides_4_to_32(height, width):
    features = feature_extractor("se_resnet18")
    assert isinstance(features.output, dict)
    out = _run(features, np.zeros((2, height, width, 3), "float32"))
    assert list(out) == list(LEVELS)
    for level, stride, channels in zip(LEVELS, (4, 8, 16, 32), (64, 128, 256, 512)):
        assert out[level].shape == (2, height // stride, width // stride, channels)
    info = features.pyramid_info
    assert [d["name"] for d in info] == list(LEVELS)
    assert [d["stride"] for d in info] == [4, 8, 16, 32]
    assert [d["channels"] for d in info] == [64, 128, 256, 512]
    # The block outputs, never a tensor inside a block or on a shortcut.
    assert [d["layer"] for d in info] == [f"conv{k}_block2_out" for k in (2, 3, 4, 5)]
    assert list(feature_info("se_resnet18")) == list(info)


def test_weights_file_arrives_in_the_feature_model(tmp_path):
    keras.utils.set_random_seed(1)
    source = create_model("se_resnet18", include_top=False, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for layer in source.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.2, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    path = tmp_path / "se_resnet18.weights.h5"
    source.save_weights(path)

    features = feature_extractor("se_resnet18", weights=str(path), levels=("C3", "C5"))
    for name in ("conv1_conv", "conv3_block2_2_bn", "conv5_block2_se"):
        for a, b in zip(source.get_layer(name).weights, features.get_layer(name).weights):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
            )
    reference = keras.Model(
        source.input,
        [source.get_layer("conv3_block2_out").output, source.output],
    )
    x = rng.normal(size=(1, 64, 96, 3)).astype("float32")
    c3, c5 = _run(reference, x)
    out = _run(features, x)
    assert list(out) == ["C3", "C5"]
    np.testing.assert_allclose(out["C3"], c3, atol=1e-5)
    np.testing.assert_allclose(out["C5"], c5, atol=1e-5)


def test_other_functional_cnns_work_from_the_graph():
    model = keras.applications.MobileNetV2(
        alpha=0.35, weights=None, include_top=True, input_shape=(96, 96, 3)
    )
    info = feature_info(model, levels=("C1", "C2", "C3", "C4", "C5"))
    assert [d["stride"] for d in info] == [2, 4, 8, 16, 32]
    features = feature_extractor(model, levels=("C2", "C5"))
    out = _run(features, np.zeros((1, 96, 96, 3), "float32"))
    assert out["C2"].shape[1:3] == (24, 24)
    assert out["C5"].shape[1:3] == (3, 3)
    # Padded copies are skipped for the map they pad.
    assert not any(d["layer"].endswith("_pad") for d in info)
    assert out["C2"].shape[-1] == info[1]["channels"]


def test_bad_levels_and_models_raise_clear_errors():
    with pytest.raises(ValueError, match="'P3'"):
        feature_extractor("se_resnet18", levels=("P3",))
    with pytest.raises(ValueError, match="stride 64.*'C6'"):
        feature_extractor("se_resnet18", levels=("C5", "C6"))
    with pytest.raises(ValueError, match="levels"):
        feature_extractor("se_resnet18", levels="C2")
    with pytest.raises(ValueError, match="duplicates"):
        feature_info("se_resnet18", levels=("C2", "C2"))
    with pytest.raises(ValueError, match="Unknown model name"):
        feature_extractor("not_a_model")
    model = create_model("se_resnet18", include_top=False)
    with pytest.raises(ValueError, match="weights.*model name"):
        feature_extractor(model, weights="x.weights.h5")

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="no layer graph"):
        feature_info(Sub(name="sub"))
