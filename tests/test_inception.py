"""Tests of the SE-Inception family (keras_senet/models/inception*.py).

References: keras.applications' InceptionV3 / InceptionResNetV2 (weights
copied across, outputs compared), a PyTorch BN-Inception written here from
the BN paper's layer table with the Caffe/PyTorch pooling semantics, the SE
parameter formula and NumPy formulas for the preprocessing.
"""

import functools
import gc
import os
import subprocess
import sys

import numpy as np
import pytest
import torch  # before TensorFlow (see conftest.py)
import torch.nn.functional as F

import keras

from keras_senet.layers import SqueezeExcite
from keras_senet.models import inception
from keras_senet.models.inception_resnet_v2 import ScaledResidual
from keras_senet.models.inception_resnet_v2 import inception_resnet_block

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("se_bn_inception", "se_inception_v3", "se_inception_resnet_v2")

# Trainable parameters of the SE-free networks (1000 classes).
# keras.applications (BatchNorm without scale): InceptionV3 23,817,352,
# InceptionResNetV2 55,813,192 (REFERENCE.md; also re-counted below from
# keras.applications itself). BN-Inception: 11,295,240, the count of the
# PyTorch reference below, built from the BN paper's table (Ioffe & Szegedy
# 2015, Fig. 5) with the released Caffe model's conv biases and BN
# scale/shift - the layers of Cadene's PyTorch "bninception" port.
BASE_PARAMS = {
    "se_bn_inception": 11_295_240,
    "se_inception_v3": 23_817_352,
    "se_inception_resnet_v2": 55_813_192,
}
KERAS_APPLICATIONS = {
    "se_inception_v3": "InceptionV3",
    "se_inception_resnet_v2": "InceptionResNetV2",
}
# How many SE blocks, and which layer's output each one rescales.
SE_BLOCKS = {
    "se_bn_inception": 10,  # modules 3a-3c, 4a-4e, 5a, 5b
    "se_inception_v3": 11,  # mixed0 ... mixed10
    "se_inception_resnet_v2": 40,  # 10 block35, 20 block17, 10 block8
}
FEATURE_CHANNELS = {
    "se_bn_inception": 1024,
    "se_inception_v3": 2048,
    "se_inception_resnet_v2": 1536,
}
SE_INPUT_SUFFIX = {
    "se_bn_inception": "_output",  # inception_3a_se <- inception_3a_output
    "se_inception_v3": "",  # mixed0_se <- mixed0
    "se_inception_resnet_v2": "_conv",  # block35_1_se <- block35_1_conv (up)
}


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _macs(model):
    """Multiply-adds of the convolutions and dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, out = layer.output.shape
            kh, kw, cin, _ = layer.kernel.shape
            total += h * w * out * kh * kw * cin
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def _forward(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _randomize(model, seed):
    """Random BN statistics/affines and biases (kernels keep their init)."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        if w.path.endswith(("moving_variance", "gamma")):
            values.append(rng.uniform(0.5, 1.5, w.shape))
        elif w.path.endswith(("moving_mean", "beta", "bias")):
            values.append(rng.normal(0.0, 0.1, w.shape))
        else:
            values.append(keras.ops.convert_to_numpy(w))
    model.set_weights([v.astype("float32") for v in values])


class _Family:
    """The models of one variant, built on first use and shared by tests."""

    def __init__(self, variant):
        self.variant = variant
        self.size = inception.VARIANTS[variant]["default_size"]
        self.min_size = inception.VARIANTS[variant]["min_size"]

    @functools.cached_property
    def base(self):
        return inception.SEInception(
            self.variant, use_se=False, classifier_activation=None
        )

    @functools.cached_property
    def se(self):
        """With SE, the classifier, and any input size."""
        return inception.SEInception(
            self.variant, input_shape=(None, None, 3), classifier_activation=None
        )


@pytest.fixture(scope="module", params=VARIANTS)
def family(request):
    yield _Family(request.param)
    keras.backend.clear_session()
    gc.collect()


# --- BN-Inception reference in PyTorch ----------------------------------

# The BN paper's table: name, #1x1, #3x3 reduce, #3x3, double #3x3 reduce,
# double #3x3, pool, pool projection (0: pass through), stride.
BN_TABLE = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 352, 192, 320, 192, 224, "max", 128, 1),
)


class TorchBNInception(torch.nn.Module):
    """BN-Inception as the Caffe model / Cadene's PyTorch port compute it."""

    def __init__(self, classes=1000):
        super().__init__()
        self.units = torch.nn.ModuleDict()
        self.strides = {}

        def unit(name, cin, cout, k, stride=1):
            self.units[name] = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, k, stride, k // 2),
                torch.nn.BatchNorm2d(cout, eps=1e-5),
            )
            return cout

        c = unit("conv1_7x7_s2", 3, 64, 7, 2)
        c = unit("conv2_3x3_reduce", c, 64, 1)
        c = unit("conv2_3x3", c, 192, 3)
        for name, c1, r3, c3, rd, d, _, proj, s in BN_TABLE:
            n = f"inception_{name}"
            out = 0
            if c1:
                out += unit(f"{n}_1x1", c, c1, 1)
            unit(f"{n}_3x3_reduce", c, r3, 1)
            out += unit(f"{n}_3x3", r3, c3, 3, s)
            unit(f"{n}_double_3x3_reduce", c, rd, 1)
            unit(f"{n}_double_3x3_1", rd, d, 3)
            out += unit(f"{n}_double_3x3_2", d, d, 3, s)
            out += unit(f"{n}_pool_proj", c, proj, 1) if proj else c
            c = out
        self.fc = torch.nn.Linear(c, classes)

    def forward(self, x):
        def u(name, x):
            return F.relu(self.units[name](x))

        x = u("conv1_7x7_s2", x)
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = u("conv2_3x3", u("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        for name, c1, _, _, _, _, pool, proj, s in BN_TABLE:
            n = f"inception_{name}"
            outs = [u(f"{n}_1x1", x)] if c1 else []
            outs.append(u(f"{n}_3x3", u(f"{n}_3x3_reduce", x)))
            y = u(f"{n}_double_3x3_reduce", x)
            outs.append(u(f"{n}_double_3x3_2", u(f"{n}_double_3x3_1", y)))
            if pool == "avg":
                p = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
            else:
                p = F.max_pool2d(x, 3, s, 1 if s == 1 else 0, ceil_mode=True)
            outs.append(u(f"{n}_pool_proj", p) if proj else p)
            x = torch.cat(outs, 1)
        return self.fc(x.mean((2, 3)))


def _copy_to_torch(model, ref):
    with torch.no_grad():
        for name, (conv, bn) in ref.units.items():
            kernel, bias = model.get_layer(f"{name}_conv").get_weights()
            conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
            conv.bias.copy_(torch.from_numpy(bias))
            gamma, beta, mean, var = model.get_layer(f"{name}_bn").get_weights()
            for t, v in ((bn.weight, gamma), (bn.bias, beta)):
                t.copy_(torch.from_numpy(v))
            bn.running_mean.copy_(torch.from_numpy(mean))
            bn.running_var.copy_(torch.from_numpy(var))
        kernel, bias = model.get_layer("logits").get_weights()
        ref.fc.weight.copy_(torch.from_numpy(kernel.T))
        ref.fc.bias.copy_(torch.from_numpy(bias))


# --- The base networks ---------------------------------------------------


@pytest.mark.slow
def test_base_network_matches_its_reference(family):
    """SE-free builds: the reference's parameter count and outputs."""
    model = family.base
    assert _trainable(model) == BASE_PARAMS[family.variant]
    assert not [l for l in model.layers if isinstance(l, SqueezeExcite)]
    _randomize(model, seed=0)
    size = family.size
    x = np.random.default_rng(1).uniform(-1, 1, (1, size, size, 3))
    x = x.astype("float32")
    got = _forward(model, x)

    if family.variant == "se_bn_inception":
        ref = TorchBNInception().eval()
        assert sum(p.numel() for p in ref.parameters()) == BASE_PARAMS[
            family.variant
        ]
        _copy_to_torch(model, ref)
        with torch.no_grad():
            want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    else:
        app = getattr(keras.applications, KERAS_APPLICATIONS[family.variant])
        ref = app(weights=None, classifier_activation=None)
        assert _trainable(ref) == BASE_PARAMS[family.variant]
        ref.set_weights(model.get_weights())  # same layers, same order
        want = _forward(ref, x)
        del ref
    scale = np.abs(want).max()
    assert scale > 1e-3
    np.testing.assert_allclose(got, want, atol=2e-4 * scale, rtol=1e-4)


@pytest.mark.slow
def test_se_adds_exactly_the_se_parameters_and_few_flops(family):
    base, model = family.base, family.se
    se_layers = [l for l in model.layers if isinstance(l, SqueezeExcite)]
    assert len(se_layers) == SE_BLOCKS[family.variant]
    expected_params = _trainable(base)
    base_macs = _macs(base)
    se_macs = base_macs
    for layer in se_layers:
        # The SE block rescales the module output / the residual branch.
        source = layer.name[: -len("_se")] + SE_INPUT_SUFFIX[family.variant]
        assert layer.input is model.get_layer(source).output
        c = layer.input.shape[-1]
        expected_params += 2 * c * (c // 16) + c // 16 + c
        # Its cost at the default size: the two FCs, one multiply per
        # element for the rescale (the rest of the network is the base's).
        _, h, w, _ = base.get_layer(source).output.shape
        se_macs += 2 * c * (c // 16) + h * w * c
    assert _trainable(model) == expected_params
    assert 0 < se_macs - base_macs < 0.005 * base_macs
    if family.variant == "se_bn_inception":
        # The paper: BN-Inception 2.03 GFLOPs (multiply-adds) at 224.
        assert abs(base_macs / 1e9 - 2.03) < 0.02


@pytest.mark.slow
def test_shapes_at_any_input_size(family):
    """Small, odd and default sizes; the feature map and the classifier."""
    model = family.se
    features = keras.Model(model.input, model.get_layer("avg_pool").input)

    def ceil_half(h):
        return -(-h // 2)

    def out_side(h):
        if family.variant == "se_bn_inception":
            h = ceil_half(h)  # 7x7/2, pad 3
            h = ceil_half(h - 1)  # ceil-mode 3x3/2 pool
            h = ceil_half(h - 1)  # ceil-mode 3x3/2 pool
            return ceil_half(ceil_half(h))  # 3c, 4e: 3x3/2, pad 1
        h = (h - 3) // 2 + 1 - 2  # 3x3/2 valid, 3x3 valid
        h = (h - 3) // 2 + 1 - 2  # pool 3x3/2, 3x3 valid
        for _ in range(3):  # pool 3x3/2 and the two grid reductions
            h = (h - 3) // 2 + 1
        return h

    channels = FEATURE_CHANNELS[family.variant]
    rng = np.random.default_rng(9)
    for h, w in (
        (family.min_size, family.min_size + 5),
        (family.min_size + 22, family.min_size + 3),
        (family.size, family.size),
    ):
        x = rng.uniform(-1, 1, (1, h, w, 3)).astype("float32")
        out = _forward(features, x)
        assert out.shape == (1, out_side(h), out_side(w), channels)
        assert np.all(np.isfinite(out))
    assert _forward(model, x).shape == (1, 1000)


# --- The keras.applications contract ---------------------------------------


@pytest.fixture(scope="module")
def small_bn():
    """A small SE-BN-Inception with random BN statistics (7 classes)."""
    model = inception.SEBNInception(input_shape=(64, 64, 3), classes=7)
    _randomize(model, seed=2)
    return model


def _block_model():
    """An SE Inception-ResNet block35 (SE + ScaledResidual) on 8x8x320."""
    inputs = keras.Input((8, 8, 320))
    x = inception_resnet_block(
        inputs,
        "block35",
        1,
        scale=0.17,
        activation="relu",
        use_se=True,
        reduction=16,
        channel_axis=-1,
    )
    model = keras.Model(inputs, x)
    _randomize(model, seed=3)
    return model


_LOAD_SCRIPT = """
import sys
import numpy as np
import keras
import keras_senet  # registers the package's layers; no custom_objects
paths = sys.argv[1:]
for i in range(0, len(paths), 3):
    model = keras.models.load_model(paths[i])
    names = {type(l).__name__ for l in model.layers}
    x = np.load(paths[i + 1])
    if keras.backend.backend() == "jax":  # traced and compiled, like in use
        y = model.predict(x, verbose=0)
    else:  # eager: cheaper than tracing for one call
        y = keras.ops.convert_to_numpy(model(x, training=False))
    np.save(paths[i + 2], y)
    mine = sorted(names & {"SqueezeExcite", "ScaledResidual"})
    print(keras.backend.backend(), mine)
"""


@pytest.fixture(scope="module")
def saved(small_bn, tmp_path_factory):
    """Both models saved as .keras, their inputs and their TF outputs."""
    folder = tmp_path_factory.mktemp("saved")
    rng = np.random.default_rng(4)
    cases = []
    for name, model, shape in (
        ("bn", small_bn, (2, 64, 64, 3)),
        ("block", _block_model(), (2, 8, 8, 320)),
    ):
        x = rng.uniform(-1, 1, shape).astype("float32")
        model.save(folder / f"{name}.keras")
        np.save(folder / f"{name}_x.npy", x)
        cases.append((name, model(x, training=False).numpy()))
    return folder, cases


def _load_in_subprocess(folder, cases, backend):
    args = []
    for name, _ in cases:
        args += [
            str(folder / f"{name}.keras"),
            str(folder / f"{name}_x.npy"),
            str(folder / f"{name}_{backend}.npy"),
        ]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, env.get("PYTHONPATH")) if p
    )
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f"{backend} ['SqueezeExcite']",
        f"{backend} ['ScaledResidual', 'SqueezeExcite']",
    ]
    return [np.load(folder / f"{name}_{backend}.npy") for name, _ in cases]


@pytest.mark.slow
def test_save_and_load_in_a_fresh_process(saved):
    """keras.models.load_model, no custom_objects: identical outputs."""
    folder, cases = saved
    outputs = _load_in_subprocess(folder, cases, "tensorflow")
    for got, (_, want) in zip(outputs, cases):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_jax_backend_forward_pass(saved):
    """The saved models rebuild and run under JAX with the same outputs."""
    folder, cases = saved
    outputs = _load_in_subprocess(folder, cases, "jax")
    for got, (_, want) in zip(outputs, cases):
        atol = 1e-4 * np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)


def test_weights_path_round_trip(small_bn, tmp_path):
    path = tmp_path / "bn.weights.h5"
    small_bn.save_weights(path)
    x = np.random.default_rng(5).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    loaded = inception.SEBNInception(
        input_shape=(64, 64, 3), classes=7, weights=str(path)
    )
    # small_bn's BN statistics are random: a fresh model would differ.
    want = _forward(small_bn, x)
    np.testing.assert_allclose(_forward(loaded, x), want, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_imagenet_weights_raise_a_clear_error(variant):
    with pytest.raises(ValueError) as info:
        inception.BUILDERS[variant](weights="imagenet")
    message = str(info.value)
    assert f"python -m training.train --model {variant}" in message
    assert "weights=<path" in message and "weights='imagenet'" in message


@pytest.mark.parametrize(
    "variant, kwargs, words",
    [
        ("se_inception_v3", dict(input_shape=(74, 80, 3)), "at least 75x75"),
        (
            "se_inception_resnet_v2",
            dict(input_tensor=keras.Input((299, 60, 3))),
            "at least 75x75",
        ),
        ("se_bn_inception", dict(input_shape=(31, 64, 3)), "at least 32x32"),
        ("se_bn_inception", dict(classes=0), "classes=0"),
        ("se_inception_v3", dict(weights="/no/such/file.weights.h5"), "weights="),
        ("se_bn_inception", dict(pooling="sum", include_top=False), "pooling="),
        ("se_bn_inception", dict(use_se="no"), "use_se='no'"),
    ],
)
def test_bad_arguments_raise_value_errors(variant, kwargs, words):
    with pytest.raises(ValueError, match=words):
        inception.BUILDERS[variant](**kwargs)


def test_unknown_variant():
    with pytest.raises(ValueError, match="variant='se_inception_v4'"):
        inception.SEInception("se_inception_v4")


def test_mixed_precision_outputs_and_variables_are_float32():
    keras.config.set_dtype_policy("mixed_float16")
    model = inception.SEBNInception(input_shape=(32, 32, 3), classes=5)
    assert model.get_layer("inception_3a_1x1_conv").compute_dtype == "float16"
    out = _forward(model, np.ones((2, 32, 32, 3), "float32"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-3)
    assert {w.dtype for w in model.weights} == {"float32"}


@pytest.mark.slow
def test_a_few_training_steps_reduce_the_loss():
    keras.utils.set_random_seed(6)
    model = inception.SEBNInception(input_shape=(32, 32, 3), classes=3)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        # For four steps, tracing (let alone XLA) costs more than it saves.
        run_eagerly=True,
    )
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 8)
    losses = model.fit(x, y, batch_size=8, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


# --- Small parts -------------------------------------------------------------


def test_scaled_residual_layer():
    layer = ScaledResidual(0.17, name="add")
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 3, 4))
    out = layer([a.astype("float32"), b.astype("float32")])
    out = keras.ops.convert_to_numpy(out)
    np.testing.assert_allclose(out, a + 0.17 * b, atol=1e-6)
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, ScaledResidual) and clone.scale == 0.17
    with pytest.raises(ValueError, match="scale="):
        ScaledResidual("big")


def test_preprocessing_follows_each_models_convention():
    rng = np.random.default_rng(8)
    x = rng.uniform(0, 255, (2, 5, 4, 3)).astype("float32")
    for variant, fn in (
        ("se_inception_v3", inception.preprocess_input_inception),
        ("se_inception_resnet_v2", inception.preprocess_input_inception),
        ("se_bn_inception", inception.preprocess_input_bn_inception),
    ):
        assert inception.PREPROCESS[variant] is fn
    assert set(inception.PREPROCESS) == set(VARIANTS)

    np.testing.assert_allclose(
        inception.preprocess_input_inception(x), x / 127.5 - 1, atol=1e-5
    )
    bgr = x[..., ::-1] - np.array([104.0, 117.0, 123.0])
    np.testing.assert_allclose(
        inception.preprocess_input_bn_inception(x), bgr, atol=1e-3
    )
    # Tensors and channels-first input.
    first = np.transpose(x, (0, 3, 1, 2))
    got = inception.preprocess_input_bn_inception(
        keras.ops.convert_to_tensor(first), data_format="channels_first"
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), np.transpose(bgr, (0, 3, 1, 2)), atol=1e-3
    )
    with pytest.raises(ValueError, match="x.shape"):
        inception.preprocess_input_bn_inception(np.zeros((4, 4, 4)))


def test_registered_in_the_package():
    import keras_senet

    for variant, builder in inception.BUILDERS.items():
        assert keras_senet.models.MODELS[variant] is builder
        assert variant in keras_senet.list_models()
    assert keras_senet.SEBNInception is inception.SEBNInception
    assert keras_senet.SEInceptionV3 is inception.SEInceptionV3
    assert keras_senet.SEInceptionResNetV2 is inception.SEInceptionResNetV2


@pytest.mark.parametrize("name", sorted(inception.VARIANTS))
def test_input_config_reproduces_the_preprocessing_function(name):
    """What input pipelines read (input_config) is what PREPROCESS computes."""
    import tensorflow as tf

    from keras_senet.models import input_config
    from training import transforms

    config = input_config(name)
    x = np.random.default_rng(0).integers(0, 256, size=(2, 5, 6, 3)).astype("uint8")
    want = np.asarray(inception.PREPROCESS[name](x))
    got = transforms.normalize(tf.constant(x), config["mean"], config["std"]).numpy()
    if config["channel_order"] == "bgr":
        got = got[..., ::-1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert config["input_size"] == inception.VARIANTS[name]["default_size"]
