"""The SE block's fused computation on TensorFlow's CPU.

TensorFlow runs every op of a graph as its own pass over memory. The SE block
of an SE-ResNet written with plain ops (``mean``, ``multiply``, then the
residual ``add`` and ``relu``) reads and writes its feature map four times,
and each pass costs about as much as the add itself. Measured here (2-core
AMD EPYC, TF 2.21, one 32x56x56x256 float32 map, CPU time of one thread):
12.7 ms for the mean, 34 ms for the multiply, 40 ms for add + ReLU; the whole
tail 73 ms against 48 ms for ResNet-50's add + ReLU. `se_forward` computes
the same values in fewer passes (47 ms, as cheap as ResNet-50's add + ReLU):

- the squeeze is a global ``avg_pool2d`` (oneDNN's pooling: 5.4 ms on that
  map, twice the memory rate of ``reduce_mean``), of the map cast to the
  variable dtype (float32 under mixed precision, as in the plain path);
- the rescale, the residual add and the activation, ``act(x * gates +
  shortcut)``, are one XLA cluster (`tf.xla.experimental.jit_scope`): one
  loop over the map. The graph keeps ordinary ``Mul``/``AddV2``/``Relu``
  ops, only marked for XLA, so SavedModel, TFLite and ONNX converters see
  plain ops;
- the gradient is written out (``tf.custom_gradient``): ``ReluGrad``; the
  gates' gradient as ``avg_pool(d * x)`` (oneDNN's pooling again: XLA's CPU
  reductions and ``reduce_sum`` are 2x slower); the input's gradient
  ``d * gates + d_squeeze / (H * W)`` as one XLA loop, the squeeze's
  gradient folded in instead of a broadcast and an extra add. Forward and
  backward of the block: 83 ms against 136 ms for the plain ops and 48 ms
  for ResNet-50's add + ReLU (float32; mixed_bfloat16: 87 vs 148 and 57).
  The excitation (two small dense layers) is differentiated by TensorFlow
  itself, so its variables, quantisation and regularisers behave as
  everywhere else.

`use_fused_path` says when this path is taken: the TensorFlow backend, a
CPU, outside an enclosing XLA compilation (under ``jit_compile=True`` XLA
fuses the plain ops itself). Everything else (JAX, torch, GPUs) runs the
plain Keras ops of `keras_senet.layers.SqueezeExcite`; tests/test_fused.py
checks that both give the same values and gradients.

TensorFlow is imported only when this path runs, never at import time.
"""

import contextlib

import keras

# Activations the fused path applies after the residual add, with the
# derivative it writes out for each (from the activation's output).
FUSED_ACTIVATIONS = ("relu", "linear")

# Feature maps with fewer elements than this (all of them, batch included)
# skip the XLA clusters: launching one costs more than the passes it saves
# on small maps (SE-ResNet-50 at batch 1, 2 cores: 0.934x ResNet-50 with
# XLA on every block, 0.955x with plain ops; its largest map there has
# 0.8 M elements, the smallest at batch 32 3.2 M).
XLA_MIN_ELEMENTS = 1_000_000


def tf_on_cpu(tf, inputs):
    """Whether TensorFlow runs ``inputs`` on a CPU: its device names one,
    or it names none and TensorFlow sees no GPU."""
    device = (getattr(inputs, "device", None) or "").upper()
    if "GPU" in device or "TPU" in device:
        return False
    if "CPU" in device:
        return True
    return not tf.config.list_logical_devices("GPU")


def tf_in_xla_context(tf):
    """Whether TensorFlow reports an enclosing XLA compilation (a
    ``jit_compile=True`` function or model) while tracing."""
    internal = getattr(tf, "__internal__", None)
    find = getattr(internal, "get_enclosing_xla_context", None)
    return find is not None and find() is not None


def use_fused_path(inputs):
    """Whether `se_forward` computes the SE block for ``inputs``."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf  # the TensorFlow backend is active

    return tf_on_cpu(tf, inputs) and not tf_in_xla_context(tf)


def _xla_scope(tf, x):
    """Marks the ops built inside for one XLA cluster, for large maps ``x``
    (`XLA_MIN_ELEMENTS`; maps of unknown size count as large) and in graph
    mode only (eager ops run one by one as usual)."""
    elements = x.shape.num_elements()
    small = elements is not None and elements < XLA_MIN_ELEMENTS
    if tf.executing_eagerly() or small:
        return contextlib.nullcontext()
    return tf.xla.experimental.jit_scope(
        compile_ops=True, separate_compiled_gradients=True
    )


def _spatial_axes(data_format):
    return (1, 2) if data_format == "channels_last" else (2, 3)


def spatial_mean(x, data_format):
    """Per-channel means ``(batch, C)`` of a 4D TensorFlow tensor: oneDNN's
    global average pooling where it applies (channels_last, known height
    and width), else ``reduce_mean``. float32 and bfloat16 inputs are
    averaged in their dtype (accumulated in float32, the result rounded
    once); others in float32 (TensorFlow's CPU pooling and mean accumulate
    float16 in float16: 3136 values of 1.0 average to 0.65)."""
    import tensorflow as tf

    if x.dtype not in (tf.float32, tf.bfloat16, tf.float64):
        x = tf.cast(x, tf.float32)
    height, width = (
        x.shape[1:3] if data_format == "channels_last" else x.shape[2:4]
    )
    if data_format == "channels_last" and height and width:
        pooled = tf.nn.avg_pool2d(x, (height, width), 1, "VALID")
        return tf.reshape(pooled, tf.shape(pooled)[::3])
    return tf.reduce_mean(x, axis=_spatial_axes(data_format))


def _broadcastable(values, data_format):
    """``(batch, C)`` -> ``(batch, 1, 1, C)`` or ``(batch, C, 1, 1)``."""
    if data_format == "channels_last":
        return values[:, None, None, :]
    return values[:, :, None, None]


def se_forward(x, shortcut, *, squeeze_dtype, excite, data_format, relu):
    """``act(x * excite(squeeze(x)) [+ shortcut])`` with fused passes.

    Args:
        x: the feature map, a 4D TensorFlow tensor in the compute dtype.
        shortcut: a tensor of ``x``'s shape and dtype to add, or ``None``.
        squeeze_dtype: the dtype of the squeeze and the excitation (the
            variables' dtype).
        excite: callable ``(batch, C) -> (batch, C)`` gates; TensorFlow
            differentiates it (and its variables) itself.
        data_format: ``"channels_last"`` or ``"channels_first"``.
        relu: apply ReLU after the add (else nothing).
    """
    import tensorflow as tf

    axes = _spatial_axes(data_format)

    def block(x, shortcut):
        squeezed = spatial_mean(tf.cast(x, squeeze_dtype), data_format)
        with tf.GradientTape() as tape:
            tape.watch(squeezed)
            gates = excite(squeezed)
        gates_b = _broadcastable(gates, data_format)
        with _xla_scope(tf, x):
            y = x * tf.cast(gates_b, x.dtype)
            if shortcut is not None:
                y = y + shortcut
            if relu:
                y = tf.nn.relu(y)

        def grad(dy, variables=None):
            # The activation's gradient (also the shortcut's).
            d = tf.raw_ops.ReluGrad(gradients=dy, features=y) if relu else dy
            # The gates' gradient, sum over H, W of d * x: the product, then
            # the pooling (much faster than reduce_sum, and than XLA's
            # reduction on the CPU).
            spatial = tf.reduce_prod(tf.shape(x)[axes[0] : axes[1] + 1])
            spatial = tf.cast(spatial, gates.dtype)
            d_gates = tf.cast(spatial_mean(d * x, data_format), gates.dtype)
            sources = [squeezed] + list(variables or [])
            grads = tape.gradient(
                gates, sources, output_gradients=d_gates * spatial
            )
            # The input's gradient from the rescale plus the squeeze's
            # (its mean's gradient, spread over H, W), in one pass.
            d_squeeze = _broadcastable(grads[0] / spatial, data_format)
            with _xla_scope(tf, x):
                dx = d * tf.cast(gates_b, d.dtype) + tf.cast(d_squeeze, d.dtype)
            inputs_grad = dx if shortcut is None else (dx, d)
            if not variables:
                return inputs_grad
            return inputs_grad, grads[1:]

        return y, grad

    if shortcut is None:
        return tf.custom_gradient(lambda x: block(x, None))(x)
    return tf.custom_gradient(block)(x, shortcut)
