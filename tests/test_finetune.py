"""freeze_backbone: frozen weights and BN statistics survive fit()."""

import keras
import numpy as np
import pytest

from keras_senet import create_model
from keras_senet.finetune import freeze_backbone
from keras_senet.finetune import trainable_summary


def _model():
    keras.utils.set_random_seed(0)
    return create_model("se_resnet18", input_shape=(32, 32, 3), classes=3)


def _snapshot(model):
    return {
        (layer.name, w.path): keras.ops.convert_to_numpy(w).copy()
        for layer in model.layers
        for w in layer.weights
    }


def _fit(model):
    rng = np.random.default_rng(0)
    # Not zero-mean: BN batch statistics differ from the moving ones.
    x = rng.normal(2.0, 3.0, size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=8)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        run_eagerly=True,
    )
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    return x


def _changed(before, after, predicate):
    return {
        key
        for key in before
        if predicate(key) and not np.array_equal(before[key], after[key])
    }


def test_frozen_backbone_keeps_weights_and_bn_statistics():
    model = freeze_backbone(_model())
    assert [w.path for w in model.trainable_weights] == ["logits/kernel", "logits/bias"]
    trainable, frozen = trainable_summary(model)
    assert trainable == 512 * 3 + 3
    assert trainable + frozen == model.count_params()
    before = _snapshot(model)
    x = _fit(model)
    after = _snapshot(model)
    assert _changed(before, after, lambda k: k[0] != "logits") == set()
    assert _changed(before, after, lambda k: k[0] == "logits") == {
        ("logits", "logits/kernel"),
        ("logits", "logits/bias"),
    }
    # Frozen BN runs in inference mode even when called in training mode.
    np.testing.assert_allclose(
        model(x, training=True), model(x, training=False), atol=1e-6
    )


def test_train_bn_updates_statistics_only_in_bn_layers():
    model = freeze_backbone(_model(), train_bn=True)
    before = _snapshot(model)
    _fit(model)
    after = _snapshot(model)
    bn = {l.name for l in model.layers if isinstance(l, keras.layers.BatchNormalization)}
    changed = _changed(before, after, lambda k: True)
    assert {name for name, _ in changed} - bn == {"logits"}
    assert ("conv1_bn", "conv1_bn/moving_mean") in changed
    assert ("conv1_bn", "conv1_bn/gamma") in changed


def test_head_patterns_unfreeze_the_last_stage():
    model = freeze_backbone(_model(), head=("conv5_*", "logits"))
    before = _snapshot(model)
    _fit(model)
    after = _snapshot(model)
    changed_layers = {name for name, _ in _changed(before, after, lambda k: True)}
    assert "conv5_block2_2_conv" in changed_layers
    assert "conv5_block2_se" in changed_layers
    assert not any(n.startswith(("conv1", "conv2", "conv3", "conv4")) for n in changed_layers)
    # BN stays frozen inside the unfrozen stage too (train_bn=False).
    assert not any(n.endswith("_bn") for n in changed_layers)


def test_bad_arguments_raise_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="'conv9_\\*'"):
        freeze_backbone(model, head=("conv9_*",))
    with pytest.raises(ValueError, match="keras.Model"):
        freeze_backbone("se_resnet18")
    inputs = keras.Input((4,))
    dense = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="mlp")
    with pytest.raises(ValueError, match="'mlp'.*head"):
        freeze_backbone(dense)
