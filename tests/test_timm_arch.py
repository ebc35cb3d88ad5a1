"""timm's modern SE-ResNet / SE-ResNeXt family (timm's `ResNet` with SE):
parameter counts and logits against timm, the "timm" state-dict layout, the
shape-only conversion plan, the layout hint, input-channel adaptation and
the JAX backend.

timm's references have random weights conditioned like a trained network
(weights/reference.py); timm's parameter counts and shapes come from models
on torch's "meta" device (no memory, no initialisation). Every variant's
structure is checked at full depth on a graph built without initialising
its weights; logits are compared at full depth for four variants (one of
them through the builder's ``weights=<.pth>`` path, and the 149 M-parameter
seresnextaa201d_32x8d, slow) and on one-block-per-stage models of the same
design for the rest (full-depth parity at 224 px for all: `python -m
weights.parity`).
"""

import functools
import gc
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import keras  # noqa: E402

import keras_senet  # noqa: E402
from keras_senet import convert  # noqa: E402
from keras_senet.layers import SqueezeExcite  # noqa: E402
from keras_senet.models import senet  # noqa: E402
from weights.reference import TIMM_MODELS  # noqa: E402
from weights.reference import TIMM_RESNETS  # noqa: E402
from weights.reference import conditioned_reference  # noqa: E402

TOLERANCE = 1e-4  # max |logit difference|, float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Logits compared at full depth (the last: 149 M parameters, marked slow).
FULL_DEPTH = (
    "seresnet50",
    "seresnext26d_32x4d",
    "seresnext26t_32x4d",
    "seresnextaa201d_32x8d",
)
# 27-94 M parameters: logits compared on the same design with one block per
# stage. Their deeper stages repeat blocks whose mapping the full-depth
# models above check (up to layer2.23 / layer3.35); their full-depth
# structure and parameter counts are checked like every model's.
SHALLOW = (
    "seresnet152d",
    "seresnext50_32x4d",
    "seresnext101_32x4d",
    "seresnext101_64x4d",
    "seresnext101_32x8d",
    "seresnext101d_32x8d",
    "seresnextaa101d_32x8d",
)
EXPORTED = {
    "seresnet152d": "SEResNet152D",
    "seresnext26d_32x4d": "SEResNeXt26D_32x4d",
    "seresnext26t_32x4d": "SEResNeXt26T_32x4d",
    "seresnext101_32x8d": "SEResNeXt101_32x8d",
    "seresnext101d_32x8d": "SEResNeXt101D_32x8d",
    "seresnext101_64x4d": "SEResNeXt101_64x4d",
    "seresnextaa101d_32x8d": "SEResNeXtAA101D_32x8d",
    "seresnextaa201d_32x8d": "SEResNeXtAA201D_32x8d",
}
# Loaded through the builder's weights=<.pth> path instead of convert.
THROUGH_BUILDER = "seresnext26t_32x4d"


def _nchw_nhwc(shape, seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype("float32")
    return x, np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def _numpy_state_dict(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@functools.lru_cache(maxsize=None)
def _timm_meta(name, **kwargs):
    """timm's model on the meta device: shapes only, built in milliseconds."""
    return timm.create_model(name, device="meta", **kwargs)


def _timm_count(name, **kwargs):
    model = _timm_meta(name, **kwargs)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _small_size(name):
    # The anti-aliased models need even sides at every stage (timm's too);
    # the others are tested at odd sides, where the ceil-mode shortcut pool
    # and the padded stem pool differ from their "same"-padding look-alikes.
    return (64, 96) if senet.VARIANTS[name].get("aa") else (67, 75)


def _logits(model, x_nhwc):
    return keras.ops.convert_to_numpy(model(x_nhwc, training=False))


def _assert_logits_match(reference, model, size, seed=0):
    x_nchw, x_nhwc = _nchw_nhwc((2, 3, *size), seed=seed)
    with torch.no_grad():
        want = reference(torch.from_numpy(x_nchw)).numpy()
    got = _logits(model, x_nhwc)
    assert np.abs(want).max() > 0.5  # a non-trivial reference
    assert np.abs(got - want).max() <= TOLERANCE, np.abs(got - want).max()
    assert (got.argmax(1) == want.argmax(1)).all()


def _check_structure(name, model, **timm_kwargs):
    """Parameters, SE widths and timm's design, against timm's model."""
    assert _trainable(model) == _timm_count(name, **timm_kwargs)
    meta = _timm_meta(name, **timm_kwargs)
    # The SE widths are timm's make_divisible(C / 16, 8), block by block.
    se_layers = {l.name: l for l in model.layers if isinstance(l, SqueezeExcite)}
    blocks = {
        f"conv{s + 2}_block{b + 1}_se": block
        for s, stage in enumerate((meta.layer1, meta.layer2, meta.layer3, meta.layer4))
        for b, block in enumerate(stage)
    }
    assert sorted(se_layers) == sorted(blocks)
    for layer_name, block in blocks.items():
        assert se_layers[layer_name].hidden_channels == block.se.fc1.out_channels
    # timm's design, as layers: stride on the 3x3, pools where timm has them.
    config = senet.VARIANTS[name]
    conv2 = model.get_layer("conv3_block1_2_conv")
    assert conv2.strides == ((1, 1) if config.get("aa") else (2, 2))
    assert model.get_layer("conv3_block1_1_conv").strides == (1, 1)
    names = {l.name for l in model.layers}
    assert ("conv3_block1_2_aa" in names) == bool(config.get("aa"))
    assert ("conv3_block1_0_pool" in names) == bool(config.get("avg_down"))
    assert "conv2_block1_0_pool" not in names  # stride 1: timm's Identity
    stem = "conv1_1_conv" if "stem_channels" in config else "conv1_conv"
    assert model.get_layer(stem).strides == (2, 2)
    pool = model.get_layer("pool1_pool")
    assert type(pool).__name__ == (
        "AveragePooling2D" if config.get("aa") else "MaxPooling2D"
    )


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(n, marks=pytest.mark.slow) if n == "seresnextaa201d_32x8d" else n
        for n in FULL_DEPTH
    ],
)
def pair(request, tmp_path_factory):
    """(name, timm reference, our model with its weights) for one variant,
    each built once."""
    name = request.param
    reference = conditioned_reference(name)
    if name == THROUGH_BUILDER:
        # A .pth file (zip format) given to the public builder, which finds
        # the "timm" layout itself.
        path = tmp_path_factory.mktemp("pth") / f"{name}.pth"
        torch.save(reference.state_dict(), path)
        model = getattr(keras_senet, EXPORTED[name])(
            weights=str(path), input_shape=(None, None, 3), classifier_activation=None
        )
    else:
        model = keras_senet.create_model(
            name, input_shape=(None, None, 3), classifier_activation=None
        )
        convert.load_state_dict_into(model, _numpy_state_dict(reference))
    yield name, reference, model
    del reference, model
    keras.backend.clear_session()
    gc.collect()


def test_variant_table_and_references_agree():
    timm_layout = sorted(n for n in senet.VARIANTS if senet.layout_of(n) == "timm")
    assert timm_layout == sorted(TIMM_RESNETS) == sorted(FULL_DEPTH + SHALLOW)
    assert convert.models_with_layout("timm") == timm_layout
    assert set(TIMM_MODELS) == set(senet.VARIANTS)
    assert set(TIMM_RESNETS) <= set(keras_senet.list_models())
    for name, builder_name in EXPORTED.items():
        builder = getattr(keras_senet, builder_name)
        assert builder is senet.BUILDERS[name] and builder.__name__ == builder_name
        assert "Squeeze-and-Excitation" in builder.__doc__
    # The three whose natural names belong to the released models.
    assert keras_senet.SEResNet50.variant == "se_resnet50"
    for name in ("seresnet50", "seresnext50_32x4d", "seresnext101_32x4d"):
        assert senet.BUILDERS[name].variant == name
    assert "Bag of Tricks" in keras_senet.SEResNeXt26D_32x4d.__doc__
    assert "Shift-Invariant" in keras_senet.SEResNeXtAA101D_32x8d.__doc__
    assert "Shift-Invariant" not in keras_senet.SEResNeXt101D_32x8d.__doc__


@pytest.mark.parametrize("name", TIMM_RESNETS)
def test_parameter_count_and_structure_match_timm(name):
    """Every variant at full depth: the graph is built without initialising
    its weights (a stateless scope), so even the 149 M-parameter model costs
    seconds; the counts are timm's exactly."""
    with keras.StatelessScope(initialize_variables=False):
        model = keras_senet.create_model(name)
    assert model.name == name
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1000)
    _check_structure(name, model)


def test_logits_match_timm(pair):
    name, reference, model = pair
    _assert_logits_match(reference, model, _small_size(name))


# --- The same designs with one block per stage ------------------------------

ONE_BLOCK = (1, 1, 1, 1)


@functools.lru_cache(maxsize=3)
def _shallow_keras(name, input_shape=(None, None, 3), include_top=False):
    """Our model of variant ``name`` with one block per stage (cached: each
    test that uses the weights loads all of them first)."""
    config = dict(senet.VARIANTS[name], layers=ONE_BLOCK)
    config.pop("layout")
    inputs = keras.Input(input_shape)
    x = senet.senet_features(inputs, **config)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(1000, name="logits")(x)
    return keras.Model(inputs, x, name=f"shallow_{name}")


def _timm_features(reference, x_nchw):
    with torch.no_grad():
        out = reference.forward_features(torch.from_numpy(x_nchw)).numpy()
    return np.transpose(out, (0, 2, 3, 1))


@pytest.mark.parametrize("name", SHALLOW)
def test_logits_match_timm_with_one_block_per_stage(name):
    reference = conditioned_reference(name, layers=ONE_BLOCK)
    model = _shallow_keras(name, include_top=True)
    _check_structure(name, model, layers=ONE_BLOCK)
    convert.load_state_dict_into(model, _numpy_state_dict(reference), layout="timm")
    _assert_logits_match(reference, model, _small_size(name))


def test_shape_only_plan_on_a_meta_checkpoint():
    """The plan needs names and shapes only: timm's meta-device state dict
    (no data at all) maps completely, with the converted shapes."""
    model = _shallow_keras("seresnextaa101d_32x8d", include_top=True)
    meta = _timm_meta("seresnextaa101d_32x8d", layers=ONE_BLOCK)
    shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    assignments, skipped = convert.plan(model, shapes, layout="timm")
    assert skipped == []
    keys = [key for _, key, _ in assignments]
    assert len(keys) == len(set(keys)) == len(model.weights)
    assert set(keys) == {k for k in shapes if not k.endswith("num_batches_tracked")}
    for variable, key, transform in assignments:
        assert transform.shape(shapes[key]) == tuple(variable.shape)
    by_key = {key: variable.path for variable, key, _ in assignments}
    # timm's nn.Sequential indices: deep stem, avg_down shortcuts, aa.
    assert by_key["conv1.0.weight"] == "conv1_1_conv/kernel"
    assert by_key["conv1.6.weight"] == "conv1_3_conv/kernel"
    assert by_key["bn1.running_var"] == "conv1_3_bn/moving_variance"
    assert by_key["layer1.0.downsample.1.weight"] == "conv2_block1_0_conv/kernel"
    assert by_key["layer2.0.downsample.2.bias"] == "conv3_block1_0_bn/beta"
    assert by_key["layer4.0.se.fc2.bias"] == "conv5_block1_se/fc2/bias"
    assert by_key["fc.weight"] == "logits/kernel"

    # Every problem is listed: missing, misshapen (after conversion), extra.
    bad = dict(shapes)
    del bad["layer3.0.bn2.running_mean"]
    bad["layer2.0.conv2.weight"] = (256, 8, 3, 3)
    bad["layer9.0.conv1.weight"] = (1, 1, 1, 1)
    with pytest.raises(convert.ConversionError) as excinfo:
        convert.plan(model, bad, layout="timm")
    message = str(excinfo.value)
    assert "3 problems" in message
    assert "missing 'layer3.0.bn2.running_mean'" in message
    assert "'layer2.0.conv2.weight' has shape (256, 8, 3, 3)" in message
    assert "'layer9.0.conv1.weight'" in message
    with pytest.raises(ValueError, match="Received: layout='caffe'"):
        convert.plan(model, shapes, layout="caffe")


def test_wrong_layout_error_names_the_layouts_and_models():
    """A timm checkpoint given to the released model of the same shapes (and
    the reverse) is refused with a hint, not ~40 anonymous problems."""
    legacy = keras_senet.create_model(
        "se_resnext26_32x4d", include_top=False, input_shape=(None, None, 3)
    )
    timm_shapes = {
        k: tuple(v.shape)
        for k, v in _timm_meta("seresnext26d_32x4d").state_dict().items()
    }
    with pytest.raises(convert.ConversionError) as excinfo:
        convert.plan(legacy, timm_shapes)
    message = str(excinfo.value)
    assert "looks like a 'timm'-layout file" in message
    assert "model 'se_resnext26_32x4d' loads the 'legacy' layout" in message
    assert "Layout 'timm' is used by: seresnet152d, seresnet50," in message
    assert "Layout 'legacy' is used by: se_resnet101, se_resnet152," in message

    timm_model = _shallow_keras("seresnext26d_32x4d")
    legacy_shapes = {
        k: tuple(v.shape)
        for k, v in _timm_meta("legacy_seresnext26_32x4d").state_dict().items()
    }
    with pytest.raises(convert.ConversionError, match="looks like a 'legacy'-layout"):
        convert.plan(timm_model, legacy_shapes, layout="timm")
    # Problems of a file of the right layout get no such hint.
    with pytest.raises(convert.ConversionError) as excinfo:
        convert.plan(timm_model, timm_shapes, layout="timm")
    assert "layout file" not in str(excinfo.value)
    assert convert.guess_layout(timm_shapes) == "timm"
    assert convert.guess_layout(legacy_shapes) == "legacy"
    assert convert.guess_layout(["weight", "bias"]) is None


@pytest.mark.parametrize("in_chans", [1, 2, 4, 7])
def test_adapt_input_conv_matches_timm(in_chans):
    from timm.models import adapt_input_conv as timm_adapt

    weight = torch.randn(16, 3, 7, 7)
    want = timm_adapt(in_chans, weight).numpy()
    kernel = np.transpose(weight.numpy(), (2, 3, 1, 0))
    got = convert.adapt_input_conv(kernel, in_chans)
    assert got.shape == (7, 7, in_chans, 16) and got.dtype == kernel.dtype
    np.testing.assert_allclose(
        np.transpose(got, (3, 2, 0, 1)), want, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(convert.adapt_input_conv(kernel, 3), kernel)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4"])
def test_adapt_input_conv_rejects_bad_channel_counts(bad):
    with pytest.raises(ValueError, match=f"Received: in_channels={bad!r}"):
        convert.adapt_input_conv(np.zeros((3, 3, 3, 4)), bad)


def test_plan_adapts_the_input_convolution(caplog):
    """A 3-channel checkpoint into a 4-channel model (deep stem: the input
    convolution sits behind ZeroPadding2D): the first convolution is adapted
    as timm adapts it, and the model then computes what timm's adapted model
    computes; a channel mismatch anywhere else stays an error."""
    from timm.models import adapt_input_conv as timm_adapt

    name, in_chans = "seresnext26d_32x4d", 4
    reference = conditioned_reference(name, layers=ONE_BLOCK)
    state_dict = _numpy_state_dict(reference)
    adapted = timm.create_model(name, layers=ONE_BLOCK, in_chans=in_chans)
    weights = reference.state_dict()
    weights["conv1.0.weight"] = timm_adapt(in_chans, weights["conv1.0.weight"])
    adapted.load_state_dict(weights)
    adapted.eval()
    model = _shallow_keras(name, input_shape=(None, None, in_chans))
    assert convert.input_convolutions(model) == {"conv1_1_conv"}
    with caplog.at_level(logging.INFO, logger="keras_senet.convert"):
        skipped = convert.load_state_dict_into(model, state_dict, layout="timm")
    assert skipped == ["fc.bias", "fc.weight"]
    assert "conv1_1_conv" in caplog.text and "from 3 to 4 input channels" in caplog.text
    assert caplog.text.count("Adapted the input convolution") == 1
    x_nchw, x_nhwc = _nchw_nhwc((2, in_chans, 64, 64), seed=2)
    np.testing.assert_allclose(
        _logits(model, x_nhwc), _timm_features(adapted, x_nchw), atol=TOLERANCE
    )
    state_dict["layer1.0.conv1.weight"] = state_dict["layer1.0.conv1.weight"][:, :-1]
    with pytest.raises(convert.ConversionError, match="layer1.0.conv1.weight"):
        convert.load_state_dict_into(model, state_dict, layout="timm")


def test_one_channel_stem_is_adapted_and_pooled_as_timm():
    """A grey-image model: timm's 7x7 stem (conv1 / bn1) loaded into a
    1-channel stem, then timm's MaxPool2d(3, 2, padding=1), at odd sides."""
    from timm.models import adapt_input_conv as timm_adapt

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    bn = torch.nn.BatchNorm2d(64)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
    state_dict = {"conv1.weight": conv.weight.detach().numpy()}
    state_dict.update({f"bn1.{k}": v.numpy() for k, v in bn.state_dict().items()})
    inputs = keras.Input((None, None, 1))
    stem = senet.build_stem(inputs, stem_channels=(64,), stem_pool="max")
    model = keras.Model(inputs, stem)
    convert.load_state_dict_into(model, state_dict, layout="timm")
    x_nchw, x_nhwc = _nchw_nhwc((2, 1, 67, 80), seed=4)
    with torch.no_grad():
        y = torch.nn.functional.conv2d(
            torch.from_numpy(x_nchw), timm_adapt(1, conv.weight), stride=2, padding=3
        )
        y = torch.nn.functional.max_pool2d(torch.relu(bn.eval()(y)), 3, 2, padding=1)
    np.testing.assert_allclose(
        _logits(model, x_nhwc), np.transpose(y.numpy(), (0, 2, 3, 1)), atol=1e-5
    )


@pytest.mark.parametrize("in_channels", [1, 4])
def test_input_conv_adaptation_is_planned_from_shapes(in_channels):
    inputs = keras.Input((None, None, in_channels))
    model = keras.Model(inputs, senet.build_stem(inputs, stem_channels=(8, 8, 16)))
    shapes = {"layer0.conv1.weight": (8, 3, 3, 3), "layer0.conv2.weight": (8, 8, 3, 3),
              "layer0.conv3.weight": (16, 8, 3, 3)}
    for i, c in ((1, 8), (2, 8), (3, 16)):
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"layer0.bn{i}.{stat}"] = (c,)
    assignments, _ = convert.plan(model, shapes, layout="legacy")
    transforms = {key: t for _, key, t in assignments}
    first = transforms["layer0.conv1.weight"]
    assert first.shape((8, 3, 3, 3)) == (3, 3, in_channels, 8)
    assert transforms["layer0.conv2.weight"] is convert.CONV_KERNEL
    # A checkpoint of the model's own channel count is not adapted.
    own = dict(shapes, **{"layer0.conv1.weight": (8, in_channels, 3, 3)})
    assignments, _ = convert.plan(model, own, layout="legacy")
    transforms = {key: t for _, key, t in assignments}
    assert transforms["layer0.conv1.weight"] is convert.CONV_KERNEL


def test_ceil_mode_average_pool_matches_torch_on_tensorflow():
    """timm's avg_down pool, AvgPool2d(2, 2, ceil_mode=True,
    count_include_pad=False), at odd and even sides (the JAX backend is
    checked in test_jax_backend_matches_tensorflow_and_timm)."""
    x_nchw, x_nhwc = _nchw_nhwc((2, 3, 7, 10), seed=5)
    pool = keras.layers.AveragePooling2D(2, strides=2, padding="same")
    want = torch.nn.functional.avg_pool2d(
        torch.from_numpy(x_nchw), 2, 2, ceil_mode=True, count_include_pad=False
    ).numpy()
    got = keras.ops.convert_to_numpy(pool(x_nhwc))
    np.testing.assert_allclose(got, np.transpose(want, (0, 2, 3, 1)), atol=1e-6)
    # The last row averages one input row: the padding is not counted.
    last_row = (x_nhwc[:, 6, 0] + x_nhwc[:, 6, 1]) / 2
    np.testing.assert_allclose(got[:, 3, 0], last_row, atol=1e-6)


@pytest.mark.slow
def test_jax_backend_matches_tensorflow_and_timm(tmp_path):
    """A model with average-pool shortcuts and anti-aliasing pools builds on
    the JAX backend and gives TensorFlow's (and timm's) logits; the
    ceil-mode average pool leaves its padding out on JAX too."""
    pytest.importorskip("jax")
    name = "seresnextaa101d_32x8d"
    reference = conditioned_reference(name, layers=ONE_BLOCK)
    state_dict = _numpy_state_dict(reference)
    np.savez(tmp_path / "state_dict.npz", **state_dict)
    x_nchw, x_nhwc = _nchw_nhwc((2, 3, 64, 96), seed=3)
    np.save(tmp_path / "x.npy", x_nhwc)
    odd_nchw, odd_nhwc = _nchw_nhwc((2, 3, 7, 10), seed=5)
    np.save(tmp_path / "odd.npy", odd_nhwc)
    model = _shallow_keras(name, include_top=True)
    convert.load_state_dict_into(model, state_dict, layout="timm")
    tf_logits = _logits(model, x_nhwc)
    with torch.no_grad():
        want = reference(torch.from_numpy(x_nchw)).numpy()
    np.testing.assert_allclose(tf_logits, want, atol=TOLERANCE)
    code = f"""
import sys, numpy as np, keras
assert keras.backend.backend() == "jax"
sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
from keras_senet import convert
from test_timm_arch import _shallow_keras
path = {str(tmp_path)!r}
model = _shallow_keras({name!r}, include_top=True)
state_dict = dict(np.load(path + "/state_dict.npz"))
convert.load_state_dict_into(model, state_dict, layout="timm")
assert type(model.get_layer("conv3_block1_0_pool")).__name__ == "AveragePooling2D"
np.save(path + "/jax_logits.npy", model.predict(np.load(path + "/x.npy"), verbose=0))
pool = keras.layers.AveragePooling2D(2, strides=2, padding="same")
np.save(path + "/jax_pool.npy", np.asarray(pool(np.load(path + "/odd.npy"))))
"""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    # Eager JAX compiles every initializer and op per shape; unoptimised
    # XLA code compiles in half the time and computes the same values.
    env["XLA_FLAGS"] = " ".join([
        os.environ.get("XLA_FLAGS", ""),
        "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true",
    ]).strip()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    jax_logits = np.load(tmp_path / "jax_logits.npy")
    np.testing.assert_allclose(jax_logits, tf_logits, atol=2e-5, rtol=1e-5)
    want_pool = torch.nn.functional.avg_pool2d(
        torch.from_numpy(odd_nchw), 2, 2, ceil_mode=True, count_include_pad=False
    ).numpy()
    np.testing.assert_allclose(
        np.load(tmp_path / "jax_pool.npy"),
        np.transpose(want_pool, (0, 2, 3, 1)),
        atol=1e-6,
    )
