"""Distribution strategy, mixed precision and model set-up for training.

- `set_precision` sets the global Keras dtype policy; call it BEFORE the
  model is built. Under ``"mixed_float16"`` the optimiser is wrapped in a
  `keras.optimizers.LossScaleOptimizer` (`wrap_optimizer`); the models'
  heads and the loss stay in float32.
- `create_strategy` picks a `tf.distribute` strategy: one device,
  `MirroredStrategy` over the local GPUs, `MultiWorkerMirroredStrategy`
  from the standard ``TF_CONFIG`` environment variable, or `TPUStrategy`.
- `Runtime` says who this process is (chief or not), how many replicas
  there are and how the global batch splits over them.
- `prepare_model` rebuilds BatchNormalization layers as synchronised ones
  (optional) and attaches the weight decay to kernels only.
"""

import dataclasses
import json
import os

import keras
import tensorflow as tf

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def set_precision(precision):
    """Sets the global dtype policy (before building the model)."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {PRECISIONS}. "
            f"Received: precision={precision!r}"
        )
    keras.config.set_dtype_policy(precision)
    return keras.config.dtype_policy()


def wrap_optimizer(optimizer, precision):
    """Adds dynamic loss scaling under float16 (bfloat16 needs none)."""
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _tf_config():
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"The TF_CONFIG environment variable is not valid JSON ({e}). "
            f"Received: TF_CONFIG={raw!r}"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"TF_CONFIG must be a JSON object. Received: TF_CONFIG={raw!r}"
        )
    return config


def _cluster_size(tf_config):
    cluster = tf_config.get("cluster", {})
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))


def _local_devices(kind):
    return [d.name for d in tf.config.list_logical_devices(kind)]


def create_strategy(name="auto", tpu=None):
    """Creates the `tf.distribute.Strategy` named ``name``.

    ``"auto"``: `MultiWorkerMirroredStrategy` when ``TF_CONFIG`` describes a
    cluster of several workers, else `MirroredStrategy` over several local
    GPUs, else `OneDeviceStrategy` on the GPU (or the CPU).
    ``"mirrored"`` without GPUs mirrors over the logical CPU devices.
    ``"tpu"``: `TPUStrategy` (``tpu``: the TPU name or address; ``None``
    resolves it from the environment).
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"`strategy` must be one of {STRATEGIES}. "
            f"Received: strategy={name!r}"
        )
    # MultiWorkerMirroredStrategy must come before TensorFlow initialises
    # its runtime: nothing here lists logical devices before it.
    if name == "auto":
        if _cluster_size(_tf_config()) > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker":
        if not _tf_config():
            raise ValueError(
                "strategy='multi_worker' needs the TF_CONFIG environment "
                "variable (cluster and task). Received: TF_CONFIG unset."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = _local_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(
            gpus[0] if gpus else _local_devices("CPU")[0]
        )
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(
            devices=gpus or _local_devices("CPU")
        )
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where this process stands in the job."""

    strategy: object
    global_batch_size: int
    num_replicas: int
    per_replica_batch_size: int
    num_workers: int
    task_type: str | None
    task_id: int
    is_chief: bool

    def describe(self):
        return (
            f"{type(self.strategy).__name__}: {self.num_replicas} "
            f"replica(s) on {self.num_workers} worker(s); global batch "
            f"{self.global_batch_size} = {self.num_replicas} x "
            f"{self.per_replica_batch_size} per replica"
        )


def make_runtime(strategy, global_batch_size):
    """Checks the batch split and finds out whether this is the chief."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size < replicas or global_batch_size % replicas:
        raise ValueError(
            f"The global batch size must be a multiple of the number of "
            f"replicas ({replicas}). Received: batch_size={global_batch_size}"
        )
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None) or 0
    tf_config = _tf_config()
    cluster = tf_config.get("cluster", {})
    num_workers = max(1, _cluster_size(tf_config))
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # The chief is task "chief", or worker 0 in a cluster without one.
        is_chief = task_type in (None, "chief") or (
            task_type == "worker" and task_id == 0 and "chief" not in cluster
        )
    else:
        is_chief, num_workers = True, 1
    return Runtime(
        strategy=strategy,
        global_batch_size=global_batch_size,
        num_replicas=replicas,
        per_replica_batch_size=global_batch_size // replicas,
        num_workers=num_workers,
        task_type=task_type,
        task_id=task_id,
        is_chief=is_chief,
    )


def synchronize_batch_norm(model):
    """A copy of ``model`` whose BatchNormalization layers are synchronised.

    Rebuilds the functional model from its config with
    ``synchronized=True`` on every `keras.layers.BatchNormalization` (batch
    statistics are then computed over the global batch, across replicas),
    and copies the weights over.
    """
    config = model.get_config()
    changed = 0
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["synchronized"] = True
            changed += 1
    if not changed:
        return model
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


@keras.saving.register_keras_serializable(package="keras_senet")
class MultiWorkerModel(keras.Model):
    """A functional model for `MultiWorkerMirroredStrategy` training.

    Keras averages the per-replica step outputs (loss, metrics) with
    ``strategy.reduce("MEAN", value, axis=0)`` across workers, which fails
    on scalars; here each step returns them with a leading axis of 1, which
    that reduction averages into scalars. Build it from the trained model's
    inputs and outputs (same layers); save the plain model.
    """

    def train_step(self, data):
        return _with_leading_axis(super().train_step(data))

    def test_step(self, data):
        return _with_leading_axis(super().test_step(data))


def _with_leading_axis(logs):
    return {k: keras.ops.expand_dims(v, 0) for k, v in logs.items()}


def no_decay(variable):
    """True for variables that take no weight decay: biases, BN, any 1-D."""
    return len(variable.shape) <= 1 or variable.name in (
        "bias",
        "gamma",
        "beta",
    )


def apply_weight_decay(model, weight_decay):
    """Attaches an L2 penalty ``weight_decay / 2 * sum(w ** 2)`` to kernels.

    Its gradient is ``weight_decay * w``: coupled weight decay, as in the
    paper's Caffe SGD and PyTorch's ``SGD(weight_decay=...)``. Only the
    multi-dimensional trainable variables (convolution and dense kernels,
    the SE blocks' included) are decayed; biases and BatchNorm parameters
    never are (`no_decay`). Returns the decayed variables.
    """
    decayed = []
    for variable in model.trainable_variables:
        if weight_decay and not no_decay(variable):
            variable.regularizer = keras.regularizers.L2(weight_decay / 2)
            decayed.append(variable)
        else:
            variable.regularizer = None
    return decayed
