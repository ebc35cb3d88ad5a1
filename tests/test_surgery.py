"""add_squeeze_excite: where the SE blocks go, weights kept, bad models."""

import keras
import numpy as np
import pytest

from keras_senet import layers as se_layers
from keras_senet.surgery import add_squeeze_excite

RESNET50_STAGES = ((256, 3), (512, 4), (1024, 6), (2048, 3))


def _se_params(channels, reduction=16):
    hidden = channels // reduction
    return 2 * channels * hidden + hidden + channels


def _set_gates(model, value):
    """Zero fc2's kernel and set its bias to ``value``: gate = sigmoid(value)."""
    for layer in model.layers:
        if isinstance(layer, se_layers.SqueezeExcite):
            layer.fc2.kernel.assign(np.zeros(layer.fc2.kernel.shape, "float32"))
            layer.fc2.bias.assign(np.full(layer.fc2.bias.shape, value, "float32"))


@pytest.fixture(scope="module")
def resnet50_pair():
    keras.utils.set_random_seed(0)
    original = keras.applications.ResNet50(
        weights=None, input_shape=(64, 64, 3), classes=10
    )
    # Non-trivial BN statistics, so that copying them is checked too.
    rng = np.random.default_rng(0)
    for layer in original.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(rng.normal(0, 0.1, mean.shape).astype("float32"))
            var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32"))
    return original, add_squeeze_excite(original)


@pytest.mark.slow
def test_resnet50_parameter_growth_is_the_se_formula(resnet50_pair):
    original, rewritten = resnet50_pair
    expected = sum(n * _se_params(c) for c, n in RESNET50_STAGES)
    assert rewritten.count_params() - original.count_params() == expected
    se_names = [
        layer.name
        for layer in rewritten.layers
        if isinstance(layer, se_layers.SqueezeExcite)
    ]
    assert se_names == [
        f"conv{stage}_block{block}_se"
        for stage, (_, blocks) in enumerate(RESNET50_STAGES, start=2)
        for block in range(1, blocks + 1)
    ]
    assert rewritten.name == "se_resnet50"


@pytest.mark.slow
def test_resnet50_weights_are_copied_not_shared(resnet50_pair):
    original, rewritten = resnet50_pair
    for layer in original.layers:
        twin = rewritten.get_layer(layer.name)
        assert type(twin) is type(layer)
        for a, b in zip(layer.weights, twin.weights):
            assert a is not b
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
            )
    assert len(rewritten.weights) > len(original.weights)


@pytest.mark.slow
def test_resnet50_se_sits_on_the_branch_before_the_addition(resnet50_pair):
    original, rewritten = resnet50_pair
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype("float32")
    # Gates of 1: the rewritten network is the original one.
    _set_gates(rewritten, 30.0)
    np.testing.assert_allclose(rewritten(x), original(x), atol=1e-5)
    # Gates of 0: every block keeps only its shortcut, so a projection
    # block outputs relu(shortcut BN) and an identity block its input.
    _set_gates(rewritten, -30.0)
    probe = keras.Model(
        rewritten.input,
        [
            rewritten.get_layer("conv2_block1_out").output,
            rewritten.get_layer("conv2_block2_out").output,
        ],
    )
    shortcut = keras.Model(
        original.input, original.get_layer("conv2_block1_0_bn").output
    )
    block1, block2 = (keras.ops.convert_to_numpy(t) for t in probe(x))
    np.testing.assert_allclose(
        block1, np.maximum(keras.ops.convert_to_numpy(shortcut(x)), 0.0), atol=1e-5
    )
    np.testing.assert_allclose(block2, block1, atol=1e-6)


def _toy_resnet(use_ops_add=False):
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.ReLU(name="stem_relu")(x)
    # Identity block: the shortcut is the block input.
    y = keras.layers.Conv2D(8, 3, padding="same", name="b1_conv")(x)
    y = keras.layers.BatchNormalization(name="b1_bn")(y)
    x = (y + x) if use_ops_add else keras.layers.Add(name="b1_add")([x, y])
    x = keras.layers.ReLU(name="b1_out")(x)
    # Projection block: the shortcut is a 1x1 conv, shallower than the branch.
    s = keras.layers.Conv2D(16, 1, strides=2, name="b2_proj")(x)
    y = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="b2_conv1")(x)
    y = keras.layers.ReLU(name="b2_relu")(y)
    y = keras.layers.Conv2D(16, 3, padding="same", name="b2_conv2")(y)
    x = keras.layers.Add(name="b2_add")([s, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x), name="toy")


@pytest.mark.parametrize("use_ops_add", [False, True])
def test_toy_resnet_gates_scale_only_the_branch(use_ops_add):
    model = _toy_resnet(use_ops_add)
    x = np.random.default_rng(2).normal(size=(3, 16, 16, 3)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x))
    rewritten = add_squeeze_excite(model, reduction=4)
    ses = [l for l in rewritten.layers if isinstance(l, se_layers.SqueezeExcite)]
    assert len(ses) == 2
    # The SE inputs are the branches' last layers.
    branch_ends = {"b1_bn", "b2_conv2"}
    assert sum(
        se.input is rewritten.get_layer(n).output for se in ses for n in branch_ends
    ) == 2
    _set_gates(rewritten, -30.0)
    # With the branches off the network is stem -> relu -> (1x1 proj) -> head.
    stem = model.get_layer("stem")
    w, b = (keras.ops.convert_to_numpy(v) for v in stem.weights)
    pw, pb = (keras.ops.convert_to_numpy(v) for v in model.get_layer("b2_proj").weights)
    hw, hb = (keras.ops.convert_to_numpy(v) for v in model.get_layer("head").weights)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h = np.zeros((3, 16, 16, 8), "float64")
    for i in range(3):
        for j in range(3):
            h += padded[:, i : i + 16, j : j + 16, :] @ w[i, j]
    h = np.maximum(h + b, 0.0)
    p = h[:, ::2, ::2, :] @ pw[0, 0] + pb
    expected = p.mean(axis=(1, 2)) @ hw + hb
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rewritten(x)), expected, atol=1e-4)
    # The original model is untouched.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), before)


def _toy_inception():
    inputs = keras.Input((12, 12, 4))
    a = keras.layers.Conv2D(4, 1, name="m1_a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="m1_b")(inputs)
    c1 = keras.layers.Conv2D(2, (1, 3), padding="same", name="m1_c1")(b)
    c2 = keras.layers.Conv2D(2, (3, 1), padding="same", name="m1_c2")(b)
    inner = keras.layers.Concatenate(name="m1_inner")([c1, c2])
    x = keras.layers.Concatenate(name="mixed1")([a, b, inner])
    d = keras.layers.Conv2D(8, 1, name="m2_a")(x)
    e = keras.layers.Conv2D(8, 1, name="m2_b")(x)
    x = keras.layers.Concatenate(name="mixed2")([d, e])
    # Not a channel concatenation: stacking along the width.
    x = keras.layers.Concatenate(axis=2, name="wide")([x, x])
    return keras.Model(inputs, x, name="toy_inception")


def test_concat_placement_follows_the_outermost_channel_concatenations():
    model = _toy_inception()
    rewritten = add_squeeze_excite(model, 4, where="concat")
    ses = [l for l in rewritten.layers if isinstance(l, se_layers.SqueezeExcite)]
    assert [se.name for se in ses] == ["mixed1_se", "mixed2_se"]
    for se, concat in zip(ses, ("mixed1", "mixed2")):
        assert se.input is rewritten.get_layer(concat).output
    assert rewritten.get_layer("mixed2_se").channels == 16
    # Residual placement finds nothing in it: a clear error.
    with pytest.raises(ValueError, match="toy_inception.*no residual additions"):
        add_squeeze_excite(model, where="residual")


def test_layer_names_restricts_and_ties_are_reported():
    inputs = keras.Input((8, 8, 4))
    a = keras.layers.Conv2D(4, 3, padding="same", name="left")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="right")(inputs)
    x = keras.layers.Add(name="tied_add")([a, b])
    y = keras.layers.Conv2D(4, 3, padding="same", name="branch")(x)
    x = keras.layers.Add(name="res_add")([x, y])
    model = keras.Model(inputs, x, name="tied")
    with pytest.raises(ValueError, match="tied_add.*equally deep"):
        add_squeeze_excite(model, 2)
    rewritten = add_squeeze_excite(model, 2, layer_names=["res_add"])
    ses = [l for l in rewritten.layers if isinstance(l, se_layers.SqueezeExcite)]
    assert [se.name for se in ses] == ["res_se"]
    assert ses[0].input is rewritten.get_layer("branch").output
    with pytest.raises(ValueError, match="'tied' has no layers named \\['nope'\\]"):
        add_squeeze_excite(model, 2, layer_names=["res_add", "nope"])


def test_unrewritable_models_raise_clear_errors():
    sequential = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)], name="stack"
    )
    with pytest.raises(ValueError, match="'stack' is a Sequential model"):
        add_squeeze_excite(sequential)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed_net")
            self.conv = keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x) + self.conv(x)

    with pytest.raises(ValueError, match="'subclassed_net'.*not a functional"):
        add_squeeze_excite(Sub())

    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs), name="plain")
    with pytest.raises(ValueError, match="'plain' has no residual additions"):
        add_squeeze_excite(plain)
    with pytest.raises(ValueError, match="where"):
        add_squeeze_excite(_toy_resnet(), where="everywhere")
    with pytest.raises(ValueError, match="reduction"):
        add_squeeze_excite(_toy_resnet(), reduction=0)
    with pytest.raises(ValueError, match="model"):
        add_squeeze_excite("resnet50")


def test_rewritten_model_saves_and_reloads(tmp_path):
    rewritten = add_squeeze_excite(_toy_resnet(), 4)
    x = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype("float32")
    path = tmp_path / "se_toy.keras"
    rewritten.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(rewritten(x)), atol=1e-6
    )


def test_se_layers_follow_the_mixed_precision_policy():
    keras.config.set_dtype_policy("mixed_float16")
    rewritten = add_squeeze_excite(_toy_resnet(), 4)
    ses = [l for l in rewritten.layers if isinstance(l, se_layers.SqueezeExcite)]
    assert {se.dtype_policy.name for se in ses} == {"mixed_float16"}
    assert {se.fc1.kernel.dtype for se in ses} == {"float32"}
