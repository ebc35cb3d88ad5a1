"""Exporting SE models for serving: SavedModel, TFLite (LiteRT), ONNX.

- `export_saved_model`: a TensorFlow SavedModel whose ``serve`` endpoint
  takes float32 images and returns float32 outputs, also for a model built
  under the ``mixed_float16`` policy (the cast happens inside the graph).
- `export_tflite`: a ``.tflite`` file with TFLite built-in operators only
  (no Flex/Select TF ops): float32, or int8 post-training quantisation
  calibrated on a representative dataset (float32 input and output, int8
  inside). `run_tflite` runs one with the TFLite interpreter.
- Grouped convolutions (SE-ResNeXt, SENet-154): TFLite's built-in CONV_2D
  accepts grouped kernels (filter depth = input channels / groups) and the
  CPU interpreter runs them (checked in tests/test_export.py). Runtimes or
  delegates that lack grouped CONV_2D can take the model after
  `ungroup_convolutions`, which replaces each grouped convolution by an
  ordinary one with the equivalent block-diagonal kernel (same outputs,
  ``groups`` times more kernel weights and multiply-adds in those layers).
- `export_onnx`: ``model.export(path, format="onnx")`` of Keras itself with
  an explicit float32 signature; it needs the ``tf2onnx`` and ``onnx``
  packages on the TensorFlow backend, which are not dependencies of
  keras-senet.

Every file or folder is written under a temporary name next to its target
and renamed into place, so an interrupted export never leaves a partial
artifact under the target name; the result gets the permissions a plain
``open()`` / ``os.makedirs`` would give it (readable by other users unless
the umask says otherwise).
"""

import importlib.util
import os
import shutil
import tempfile

import keras
import numpy as np

from keras_senet.download import atomic_write

QUANTIZATIONS = (None, "int8")


def _static_input_shape(model, input_shape, what):
    shape = tuple(model.inputs[0].shape[1:]) if input_shape is None else tuple(input_shape)
    if len(model.inputs) != 1:
        raise ValueError(f"{what} supports single-input models; model {model.name!r} has {len(model.inputs)}.")
    if len(shape) != len(model.inputs[0].shape) - 1:
        raise ValueError(
            f"`input_shape` must have {len(model.inputs[0].shape) - 1} "
            f"dimensions. Received: input_shape={input_shape!r}"
        )
    return shape


def _replace_dir(temporary, path):
    """Moves the finished folder ``temporary`` to ``path``.

    `tempfile.mkdtemp` makes the folder private to its owner; it gets the
    permissions `os.makedirs` would give it (0o777 less the umask) first, so
    that a server running as another user (TF Serving) can read it.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(path))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(temporary, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_saved_model(model, path, *, input_shape=None):
    """Exports ``model`` as a SavedModel with a float32 ``serve`` endpoint.

    Args:
        model: a single-input Keras model (TensorFlow backend).
        path: the SavedModel folder to create (replaced if it exists).
        input_shape: the per-example input shape of the signature; defaults
            to the model's (``None`` sides stay variable).

    Returns:
        ``path``. Load with ``tf.saved_model.load(path)`` and call
        ``.serve(images)`` with a float32 batch; the result is float32 (a
        dict or list for multi-output models).
    """
    import tensorflow as tf

    shape = _static_input_shape(model, input_shape, "export_saved_model")
    input_dtype = model.inputs[0].dtype

    def serve(images):
        outputs = model(keras.ops.cast(images, input_dtype), training=False)
        return keras.tree.map_structure(
            lambda t: keras.ops.cast(t, "float32"), outputs
        )

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        serve,
        input_signature=[tf.TensorSpec((None,) + shape, tf.float32)],
    )
    path = os.path.abspath(os.fspath(path))
    temporary = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(path))
    try:
        archive.write_out(temporary, verbose=False)
        _replace_dir(temporary, path)
    finally:
        if os.path.exists(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
    return path


def _representative(data, batch_limit):
    def generator():
        count = 0
        for batch in data:
            batch = np.asarray(batch, "float32")
            if batch.ndim == 3:
                batch = batch[None]
            for example in batch:
                yield [example[None]]
                count += 1
                if count >= batch_limit:
                    return

    return generator


def export_tflite(
    model,
    path,
    *,
    quantization=None,
    representative_data=None,
    input_shape=None,
    calibration_steps=100,
):
    """Converts ``model`` to a TFLite file using built-in operators only.

    Args:
        model: a single-input Keras model (TensorFlow backend), float32.
        path: the ``.tflite`` file to write.
        quantization: ``None`` (float32) or ``"int8"`` (full-integer
            post-training quantisation of weights and activations; input and
            output stay float32).
        representative_data: with ``"int8"``: an array of preprocessed
            example images ``(N, H, W, C)`` or an iterable of such batches,
            used to calibrate activation ranges.
        input_shape: the per-example input shape; required when the model's
            input has ``None`` sides (TFLite quantisation needs a fixed size).
        calibration_steps: the most examples used for calibration.

    Returns:
        ``path``.
    """
    import tensorflow as tf

    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"`path` must end in '.tflite'. Received: path={path!r}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}"
        )
    shape = _static_input_shape(model, input_shape, "export_tflite")
    if any(d is None for d in shape):
        raise ValueError(
            "TFLite export needs a fixed input size: pass `input_shape` "
            f"(e.g. (224, 224, 3)). Received: input_shape={shape}"
        )
    options = {}
    if quantization == "int8":
        if representative_data is None:
            raise ValueError(
                "int8 quantisation needs `representative_data` (example "
                "images to calibrate on). Received: representative_data=None"
            )
        options.update(
            optimizations=[tf.lite.Optimize.DEFAULT],
            representative_dataset=_representative(
                representative_data, calibration_steps
            ),
            target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        )
    else:
        options["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
    with atomic_write(path) as temporary:
        model.export(
            temporary,
            format="litert",
            verbose=False,
            input_signature=[tf.TensorSpec((1,) + shape, tf.float32)],
            **options,
        )
    return path


def export_onnx(model, path, *, input_shape=None, opset_version=None):
    """Exports ``model`` to ONNX through Keras' own ``format="onnx"``.

    Needs ``tf2onnx`` and ``onnx``, the ``onnx`` extra of keras-senet
    (``pip install "keras-senet[onnx]"``; ``onnxruntime`` runs the result);
    without them it raises an ImportError that says so. The
    float32 input signature is given explicitly, so the model need not have
    been called before.

    Returns:
        ``path``.
    """
    import tensorflow as tf

    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"`path` must end in '.onnx'. Received: path={path!r}")
    missing = [m for m in ("tf2onnx", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"export_onnx needs {' and '.join(missing)}, which keras-senet does "
            'not install by default. Install them with: pip install "keras-senet[onnx]"'
            "  (or: pip install tf2onnx onnx)"
        )
    shape = _static_input_shape(model, input_shape, "export_onnx")
    with atomic_write(path) as temporary:
        model.export(
            temporary,
            format="onnx",
            verbose=False,
            input_signature=[tf.TensorSpec((None,) + shape, tf.float32)],
            opset_version=opset_version,
        )
    return path


def run_tflite(model_path, images):
    """Runs a ``.tflite`` model on ``images``, one example at a time.

    Uses TF's TFLite interpreter with its default XNNPACK delegate, falling
    back to the plain built-in kernels when the delegate rejects the graph.
    Returns the first output, stacked, as a NumPy array.
    """
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=os.fspath(model_path))
    try:
        interpreter.allocate_tensors()
    except RuntimeError as error:
        if "XNNPACK" not in str(error):
            raise
        # The XNNPACK delegate (on by default) rejects some int8 graphs
        # (seen with TF 2.21 on int8 SE-ResNets); the built-in kernels
        # run them.
        interpreter = tf.lite.Interpreter(
            model_path=os.fspath(model_path),
            experimental_op_resolver_type=(
                tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            ),
        )
        interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    outputs = []
    for example in np.asarray(images, "float32"):
        interpreter.set_tensor(source["index"], example[None].astype(source["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"])[0])
    return np.stack(outputs)


def _block_diagonal(kernel, groups):
    """A grouped kernel (kh, kw, cin/g, cout) as a dense (kh, kw, cin, cout)."""
    kh, kw, group_in, out_channels = kernel.shape
    group_out = out_channels // groups
    dense = np.zeros((kh, kw, group_in * groups, out_channels), kernel.dtype)
    for g in range(groups):
        dense[:, :, g * group_in : (g + 1) * group_in, g * group_out : (g + 1) * group_out] = (
            kernel[:, :, :, g * group_out : (g + 1) * group_out]
        )
    return dense


def ungroup_convolutions(model):
    """A copy of ``model`` whose grouped ``Conv2D`` layers are dense.

    Each ``Conv2D`` with ``groups > 1`` becomes a ``Conv2D`` with
    ``groups=1`` and the block-diagonal kernel that computes the same
    outputs; every other layer is cloned with its weights. Use it for
    runtimes without grouped-convolution support.
    """
    if not isinstance(model, keras.Model) or isinstance(model, keras.Sequential):
        raise ValueError(
            f"`model` must be a functional keras.Model. Received: model={model!r}"
        )
    pairs = []

    def clone_function(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.Conv2D) and config.get("groups", 1) > 1:
            config["groups"] = 1
        clone = layer.__class__.from_config(config)
        pairs.append((layer, clone))
        return clone

    clone = keras.models.clone_model(model, clone_function=clone_function)
    for original, copy in pairs:
        weights = original.get_weights() if getattr(original, "weights", None) else []
        if not weights:
            continue
        groups = getattr(original, "groups", 1)
        if isinstance(original, keras.layers.Conv2D) and groups > 1:
            weights[0] = _block_diagonal(weights[0], groups)
        copy.set_weights(weights)
    return clone
