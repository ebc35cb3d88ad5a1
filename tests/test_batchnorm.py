"""keras_senet.layers.BatchNormalization: Keras' layer on the fused kernel.

Every test compares it with `keras.layers.BatchNormalization` holding the
same weights: outputs, gradients and moving statistics must agree.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_senet.layers import BatchNormalization


def _pair(shape, axis=-1, policy="float32", **kwargs):
    keras.config.set_dtype_policy(policy)
    try:
        ours = BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-5, **kwargs)
        theirs = keras.layers.BatchNormalization(
            axis=axis, momentum=0.9, epsilon=1e-5, **kwargs
        )
    finally:
        keras.config.set_dtype_policy("float32")
    ours.build(shape)
    theirs.build(shape)
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in theirs.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def _train_step(layer, x):
    @tf.function
    def step():
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
            ramp = tf.reshape(tf.range(tf.size(y), dtype=tf.float32), y.shape)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * ramp / 1000.0)
        return [y] + tape.gradient(loss, [xt] + layer.trainable_weights)

    values = [v.numpy().astype("float64") for v in step()]
    values += [w.numpy() for w in layer.non_trainable_weights]  # moving stats
    values.append(np.asarray(layer(x, training=False)).astype("float64"))
    return values


def _fused_kernel_ran(layer, x, training):
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.as_dtype(x.dtype))
    ).graph
    return any(op.type.startswith("FusedBatchNorm") for op in graph.get_operations())


@pytest.mark.parametrize(
    "axis, kwargs",
    [(-1, {}), (1, {}), (3, {"center": False}), (-1, {"scale": False})],
)
def test_equals_keras_in_training_and_inference(axis, kwargs):
    shape = (4, 5, 6, 8) if axis in (-1, 3) else (4, 8, 5, 6)
    x = np.random.default_rng(1).normal(2.0, 3.0, shape).astype("float32")
    ours, theirs = _pair(shape, axis, **kwargs)
    assert _fused_kernel_ran(ours, x, True) and _fused_kernel_ran(ours, x, False)
    for index, (a, b) in enumerate(zip(_train_step(ours, x), _train_step(theirs, x))):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=2e-5 * scale, err_msg=f"value {index}")


def test_one_value_per_channel_keeps_population_variance():
    """A 1x1 map of batch 1: the batch variance is 0, never NaN."""
    x = np.random.default_rng(2).normal(size=(1, 1, 1, 4)).astype("float32")
    ours, theirs = _pair(x.shape)
    for a, b in zip(_train_step(ours, x), _train_step(theirs, x)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("policy, tol", [("mixed_bfloat16", 2e-2), ("mixed_float16", 2e-3)])
def test_mixed_precision(policy, tol):
    shape = (4, 6, 6, 8)
    x = np.random.default_rng(3).normal(1.0, 2.0, shape).astype("float32")
    ours, theirs = _pair(shape, policy=policy)
    assert all(w.dtype == "float32" for w in ours.weights)
    xc = x.astype(policy.split("_")[1]) if policy == "mixed_float16" else (
        tf.cast(x, tf.bfloat16).numpy()
    )
    y = ours(xc, training=False)
    assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
    for a, b in zip(_train_step(ours, xc), _train_step(theirs, xc)):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale)


def test_frozen_layer_uses_moving_statistics():
    shape = (4, 5, 5, 8)
    x = np.random.default_rng(4).normal(size=shape).astype("float32")
    ours, theirs = _pair(shape)
    ours.trainable = theirs.trainable = False
    before = [w.numpy() for w in ours.weights]
    np.testing.assert_allclose(
        np.asarray(ours(x, training=True)), np.asarray(theirs(x, training=True)), atol=1e-5
    )
    for a, b in zip(before, ours.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_falls_back_to_keras_where_the_kernel_does_not_apply():
    x = np.random.default_rng(5).normal(size=(4, 6, 8)).astype("float32")  # 3D
    ours, theirs = _pair(x.shape)
    assert not _fused_kernel_ran(ours, x, True)
    for a, b in zip(_train_step(ours, x), _train_step(theirs, x)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    x4 = np.zeros((2, 3, 3, 4), "float32")
    assert not _fused_kernel_ran(BatchNormalization(axis=2), x4, True)


def test_weight_files_and_configs_interchange_with_keras(tmp_path):
    """The same .weights.h5 layout as keras.layers.BatchNormalization, and a
    saved model reloads with the fused class."""
    inputs = keras.Input((6, 6, 3))
    keras_model = keras.Model(
        inputs, keras.layers.BatchNormalization(name="bn")(
            keras.layers.Conv2D(4, 3, name="conv")(inputs))
    )
    ours_model = keras.Model(
        inputs, BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    )
    rng = np.random.default_rng(6)
    keras_model.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in keras_model.get_weights()])
    keras_model.save_weights(tmp_path / "k.weights.h5")
    ours_model.load_weights(tmp_path / "k.weights.h5")
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(ours_model.predict(x, verbose=0),
                               keras_model.predict(x, verbose=0), atol=1e-5)
    ours_model.save(tmp_path / "o.keras")
    restored = keras.models.load_model(tmp_path / "o.keras")
    assert type(restored.get_layer("bn")) is BatchNormalization
    np.testing.assert_allclose(restored.predict(x, verbose=0),
                               keras_model.predict(x, verbose=0), atol=1e-5)
