"""The SE-ResNet / SE-ResNeXt / SENet-154 builders: structure and contract."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_senet
from keras_senet import SqueezeExcite

# Trainable parameters of timm's legacy_* ports of the released models
# (REFERENCE.md; BN moving statistics are not trainable).
REFERENCE_PARAMS = {
    "se_resnet18": 11_778_592,
    "se_resnet34": 21_958_868,
    "se_resnet50": 28_088_024,
    "se_resnet101": 49_326_872,
    "se_resnet152": 66_821_848,
    "se_resnext26_32x4d": 16_790_280,
    "se_resnext50_32x4d": 27_559_896,
    "se_resnext101_32x4d": 48_955_416,
    "senet154": 115_088_984,
}
# Blocks per stage and the final width of each variant.
STRUCTURE = {
    "se_resnet18": ((2, 2, 2, 2), 512),
    "se_resnet34": ((3, 4, 6, 3), 512),
    "se_resnet50": ((3, 4, 6, 3), 2048),
    "se_resnet101": ((3, 4, 23, 3), 2048),
    "se_resnet152": ((3, 8, 36, 3), 2048),
    "se_resnext26_32x4d": ((2, 2, 2, 2), 2048),
    "se_resnext50_32x4d": ((3, 4, 6, 3), 2048),
    "se_resnext101_32x4d": ((3, 4, 23, 3), 2048),
    "senet154": ((3, 8, 36, 3), 2048),
}
PUBLIC = {
    "se_resnet18": "SEResNet18",
    "se_resnet34": "SEResNet34",
    "se_resnet50": "SEResNet50",
    "se_resnet101": "SEResNet101",
    "se_resnet152": "SEResNet152",
    "se_resnext26_32x4d": "SEResNeXt26",
    "se_resnext50_32x4d": "SEResNeXt50",
    "se_resnext101_32x4d": "SEResNeXt101",
    "senet154": "SENet154",
}


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_registry_lists_every_variant():
    names = keras_senet.list_models()
    assert set(REFERENCE_PARAMS) <= set(names)
    assert names == sorted(names)
    assert keras_senet.list_models("se_resnext*") == [
        "se_resnext101_32x4d",
        "se_resnext26_32x4d",
        "se_resnext50_32x4d",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_builder_structure_and_parameter_count(name):
    builder = getattr(keras_senet, PUBLIC[name])
    model = builder(weights=None, input_shape=(64, 64, 3), classes=10)
    expected = REFERENCE_PARAMS[name] - (1000 - 10) * (STRUCTURE[name][1] + 1)
    assert _trainable(model) == expected
    blocks, width = STRUCTURE[name]
    se_layers = [l for l in model.layers if isinstance(l, SqueezeExcite)]
    assert len(se_layers) == sum(blocks)  # one SE block per residual block
    for stage, n in enumerate(blocks, start=2):
        assert model.get_layer(f"conv{stage}_block{n}_out") is not None
    y = model.predict(np.zeros((2, 64, 64, 3), "float32"), verbose=0)
    assert y.shape == (2, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    # The published 1000-class head: the reference count exactly (shapes
    # only: built without initialising its variables).
    with keras.StatelessScope(initialize_variables=False):
        full = keras_senet.create_model(name)
    assert _trainable(full) == REFERENCE_PARAMS[name]
    assert full.input_shape == (None, 224, 224, 3)
    assert full.output_shape == (None, 1000)
    assert full.name == name


def test_layer_names_follow_keras_applications():
    model = keras_senet.SEResNet50(weights=None, input_shape=(64, 64, 3))
    names = {l.name for l in model.layers}
    for expected in [
        "conv1_conv", "conv1_bn", "pool1_pool", "conv2_block1_0_conv",
        "conv2_block1_1_conv", "conv2_block1_3_bn", "conv2_block1_se",
        "conv2_block1_out", "conv5_block3_out",
        "avg_pool", "logits", "predictions",
    ]:
        assert expected in names
    # SE-ResNet: the stride is on the first 1x1 convolution (Caffe style).
    assert model.get_layer("conv3_block1_1_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_2_conv").strides == (1, 1)
    rx = keras_senet.SEResNeXt50(weights=None, input_shape=(64, 64, 3))
    assert rx.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert rx.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert rx.get_layer("conv3_block1_2_conv").groups == 32
    assert rx.get_layer("conv2_block1_2_conv").filters == 128


def test_senet154_specifics():
    model = keras_senet.SENet154(weights=None, input_shape=(64, 64, 3))
    names = {l.name for l in model.layers}
    assert {"conv1_1_conv", "conv1_2_conv", "conv1_3_conv"} <= names
    assert model.get_layer("conv1_3_conv").filters == 128
    assert model.get_layer("conv2_block1_0_conv").kernel_size == (1, 1)
    for stage in (3, 4, 5):
        assert model.get_layer(f"conv{stage}_block1_0_conv").kernel_size == (3, 3)
    assert model.get_layer("head_dropout").rate == 0.2
    assert model.get_layer("conv2_block1_2_conv").groups == 64


def test_ceil_mode_max_pool_matches_numpy():
    """pool1 equals PyTorch's MaxPool2d(3, 2, ceil_mode=True) at odd sizes."""
    model = keras_senet.SEResNet18(
        weights=None, include_top=False, input_shape=(None, None, 3)
    )
    stem = keras.Model(model.input, [model.get_layer("conv1_relu").output,
                                      model.get_layer("pool1_pool").output])
    for size in (65, 66, 67, 97):
        x = np.random.default_rng(size).normal(size=(1, size, size + 2, 3))
        relu, pooled = [np.asarray(a) for a in stem(x.astype("float32"))]
        h, w = relu.shape[1:3]
        out_h = -(-(h - 3) // 2) + 1  # ceil mode
        out_w = -(-(w - 3) // 2) + 1
        want = np.full((out_h, out_w, relu.shape[3]), -np.inf, "float32")
        for i in range(out_h):
            for j in range(out_w):
                win = relu[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                want[i, j] = win.max(axis=(0, 1))
        np.testing.assert_array_equal(pooled[0], want)


def test_variable_input_size_without_top():
    model = keras_senet.SEResNeXt26(weights=None, include_top=False)
    assert model.input_shape == (None, None, None, 3)
    for h, w in [(32, 32), (64, 96), (97, 131)]:
        y = model(np.zeros((1, h, w, 3), "float32"))
        # stride 2 conv, ceil-mode pool, then three stride-2 stages
        side = lambda n: -(-(((n + 6 - 7) // 2 + 1) - 3) // 2) + 1
        expected = [side(h), side(w)]
        for _ in range(3):
            expected = [(e + 2 - 3) // 2 + 1 for e in expected]
        assert y.shape == (1, *expected, 2048)


def test_include_top_works_at_any_size_and_pooling_options():
    model = keras_senet.SEResNet18(weights=None, input_shape=(48, 80, 3), classes=7)
    assert model.output_shape == (None, 7)
    avg = keras_senet.SEResNet18(weights=None, include_top=False, pooling="avg")
    mx = keras_senet.SEResNet18(weights=None, include_top=False, pooling="max")
    assert avg.output_shape == (None, 512) and mx.output_shape == (None, 512)
    logits = keras_senet.SEResNet18(weights=None, classifier_activation=None)
    assert logits.layers[-1].name == "logits"


def test_input_tensor():
    inp = keras.Input((72, 72, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 255)(inp)
    model = keras_senet.SEResNet18(weights=None, input_tensor=x, classes=5)
    assert model.inputs[0].name == inp.name
    assert model.output_shape == (None, 5)


BAD_ARGS = [
    (dict(weights="imagenet2012"), "weights"),
    (dict(weights="/no/such/file.weights.h5"), "/no/such/file.weights.h5"),
    (dict(weights=42), "weights=42"),
    (dict(classes=0), "classes=0"),
    (dict(classes=-3), "classes=-3"),
    (dict(classes=2.5), "classes=2.5"),
    (dict(pooling="mean", include_top=False), "pooling='mean'"),
    (dict(input_shape=(31, 224, 3)), r"input_shape=\(31, 224, 3\)"),
    # Silently truncated to 64 before.
    (dict(input_shape=(64.7, 64, 3)), r"input_shape=\(64.7, 64, 3\)"),
    (dict(input_shape=(64, 64, 0)), r"input_shape=\(64, 64, 0\)"),
    (dict(input_shape=(64, True, 3)), r"input_shape=\(64, True, 3\)"),
    (dict(input_shape=(64, 64, None)), r"channels"),
    (dict(weights="no_such_tag"), "weights='no_such_tag'"),
    (dict(input_shape=(224, 224)), r"input_shape=\(224, 224\)"),
    (dict(include_top="yes"), "include_top='yes'"),
]


@pytest.mark.parametrize("kwargs, match", BAD_ARGS)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_senet.SEResNet18(**kwargs)


def test_input_shape_conflicting_with_input_tensor():
    with pytest.raises(ValueError, match="conflicts"):
        keras_senet.SEResNet18(
            weights=None, input_tensor=keras.Input((64, 64, 3)), input_shape=(96, 96, 3)
        )
    with pytest.raises(ValueError, match="input_tensor"):
        keras_senet.SEResNet18(weights=None, input_tensor=np.zeros((1, 64, 64, 3)))


def test_create_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="model_name='se_resnet51'"):
        keras_senet.create_model("se_resnet51")
    with pytest.raises(ValueError, match="Unknown tag 'a1_in1k'.*'in1k'"):
        keras_senet.create_model("se_resnet18.a1_in1k")


def test_create_model_takes_the_keras_name():
    """The model id is positional-only: `name` is the Keras model's name
    (it raised "got multiple values for argument 'name'")."""
    model = keras_senet.create_model(
        "se_resnet18", name="my_model", include_top=False, input_shape=(32, 32, 3)
    )
    assert model.name == "my_model"


@pytest.mark.parametrize("channels", [1, 4])
def test_any_channel_count_without_pretrained_weights(channels):
    """keras.applications accepts any channel count without ImageNet
    weights (1- and 4-channel shapes were refused)."""
    x = np.random.default_rng(0).normal(size=(2, 40, 48, channels)).astype("float32")
    backbone = keras_senet.SEResNet18(
        weights=None, include_top=False, input_shape=(None, None, channels)
    )
    assert backbone.get_layer("conv1_conv").kernel.shape == (7, 7, channels, 64)
    assert backbone(x).shape == (2, 2, 2, 512)
    top = keras_senet.create_model(
        "se_resnet18", input_tensor=keras.Input((40, 48, channels)), classes=3
    )
    assert top(x).shape == (2, 3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_dtypes(policy):
    keras.config.set_dtype_policy(policy)
    model = keras_senet.SEResNeXt26(weights=None, input_shape=(64, 64, 3), classes=4)
    assert {v.dtype for v in model.weights} == {"float32"}
    assert model.get_layer("conv3_block1_2_conv").compute_dtype == policy.split("_")[1]
    y = model(np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert np.all(np.isfinite(np.asarray(y)))


def test_channels_first_matches_channels_last(tmp_path):
    x = np.random.default_rng(5).normal(size=(2, 64, 64, 3)).astype("float32")
    last = keras_senet.SEResNet18(weights=None, input_shape=(64, 64, 3), classes=6,
                                  classifier_activation=None)
    path = str(tmp_path / "w.weights.h5")
    last.save_weights(path)
    keras.config.set_image_data_format("channels_first")
    first = keras_senet.SEResNet18(weights=None, input_shape=(3, 64, 64), classes=6,
                                   classifier_activation=None)
    assert first.get_layer("conv2_block1_se").data_format == "channels_first"
    first.load_weights(path)
    y_first = np.asarray(first(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(y_first, np.asarray(last(x)), atol=1e-4)


def _run_python(code, env_extra=None, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.update(env_extra or {})
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_save_and_load_in_a_fresh_process(tmp_path):
    model = keras_senet.SEResNeXt26(weights=None, input_shape=(64, 64, 3), classes=5)
    # Non-trivial BN statistics so that a lost variable would show.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            rng = np.random.default_rng(len(layer.name))
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape) * 0.1)
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    out = _run_python(
        f"""
import numpy as np, keras
import keras_senet  # registers the package's layers, as keras_hub does
path = {str(tmp_path)!r}
x, y = np.load(path + "/x.npy"), np.load(path + "/y.npy")
m = keras.models.load_model(path + "/m.keras")
print("keras", float(np.abs(m.predict(x, verbose=0) - y).max()))
w = keras_senet.SEResNeXt26(weights=path + "/m.weights.h5", input_shape=(64, 64, 3), classes=5)
print("h5", float(np.abs(w.predict(x, verbose=0) - y).max()))
"""
    )
    diffs = dict(line.split() for line in out.strip().splitlines()[-2:])
    assert float(diffs["keras"]) == 0.0
    assert float(diffs["h5"]) == 0.0


@pytest.mark.slow
def test_jax_backend_forward_matches_tensorflow(tmp_path):
    pytest.importorskip("jax")
    results = {}
    for name in ("se_resnet50", "se_resnext50_32x4d"):
        model = keras_senet.create_model(name, input_shape=(64, 64, 3), classes=8,
                                         classifier_activation=None)
        model.save_weights(tmp_path / f"{name}.weights.h5")
        x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype("float32")
        np.save(tmp_path / "x.npy", x)
        results[name] = model.predict(x, verbose=0)
    out = _run_python(
        f"""
import json, numpy as np, keras
assert keras.backend.backend() == "jax"
import keras_senet
path = {str(tmp_path)!r}
x = np.load(path + "/x.npy")
out = {{}}
for name in ("se_resnet50", "se_resnext50_32x4d"):
    m = keras_senet.create_model(name, input_shape=(64, 64, 3), classes=8,
                                 classifier_activation=None,
                                 weights=path + "/" + name + ".weights.h5")
    out[name] = np.asarray(m(x)).tolist()
print(json.dumps(out))
""",
        env_extra={"KERAS_BACKEND": "jax"},
    )
    jax_out = json.loads(out.strip().splitlines()[-1])
    for name, want in results.items():
        np.testing.assert_allclose(np.array(jax_out[name]), want, atol=2e-4, rtol=1e-4)


def test_preprocess_input_matches_the_reference_normalisation():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 5, 5, 3)).astype("uint8")
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    want = (x / 255.0 - mean) / std
    np.testing.assert_allclose(keras_senet.preprocess_input(x), want, rtol=1e-5, atol=1e-5)
    tensor_out = keras_senet.preprocess_input(keras.ops.convert_to_tensor(x))
    np.testing.assert_allclose(np.asarray(tensor_out), want, rtol=1e-5, atol=1e-5)
    first = keras_senet.preprocess_input(
        np.transpose(x, (0, 3, 1, 2)), data_format="channels_first"
    )
    np.testing.assert_allclose(first, np.transpose(want, (0, 3, 1, 2)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"x.shape=\(2, 5, 5, 4\)"):
        keras_senet.preprocess_input(np.zeros((2, 5, 5, 4)))


def test_decode_predictions_uses_the_shipped_class_names():
    from keras_senet import imagenet

    wnids = imagenet.wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert wnids == sorted(wnids)  # the standard label order
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    names = imagenet.class_names()
    assert names[0] == "tench" and names[207] == "golden_retriever"
    preds = np.zeros((2, 1000), "float32")
    preds[0, [207, 1, 999]] = [0.7, 0.2, 0.1]
    preds[1, 0] = 1.0
    decoded = keras_senet.decode_predictions(preds, top=3)
    assert [d[0] for d in decoded[0]] == ["n02099601", "n01443537", "n15075141"]
    assert decoded[0][0][1] == "golden_retriever"
    assert decoded[0][0][2] == pytest.approx(0.7)
    assert decoded[1][0][:2] == ("n01440764", "tench")
    with pytest.raises(ValueError, match=r"preds.shape=\(2, 10\)"):
        keras_senet.decode_predictions(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="top=0"):
        keras_senet.decode_predictions(preds, top=0)
