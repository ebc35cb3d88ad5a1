"""Fine-tuning: freeze a pretrained backbone, train a new head, unfreeze.

In Keras 3 a `BatchNormalization` layer whose ``trainable`` is False runs in
inference mode even inside ``fit()``: it normalises with its moving mean and
variance and does not update them. `freeze_backbone` relies on that, so a
frozen backbone computes exactly what it computed in pretraining, and its
statistics survive training on a small new dataset.
"""

import fnmatch

import keras


def _leaf_layers(layer):
    """The layers to set flags on: nested models are walked into."""
    if isinstance(layer, keras.Model):
        for inner in layer.layers:
            yield from _leaf_layers(inner)
    elif not isinstance(layer, keras.layers.InputLayer):
        yield layer


def _output_rank(layer):
    try:
        outputs = keras.tree.flatten(layer.output)
    except (AttributeError, ValueError):
        return None
    return max((len(t.shape) for t in outputs), default=None)


def _default_head(model, layers):
    """The layers after the last one that outputs a 4D feature map."""
    ranks = [_output_rank(layer) for layer in layers]
    spatial = [i for i, rank in enumerate(ranks) if rank is not None and rank >= 4]
    if not spatial:
        raise ValueError(
            f"Cannot tell the backbone of model {model.name!r} from its "
            "head: no layer outputs a 4D feature map. Pass `head` (layer "
            "names or glob patterns) explicitly."
        )
    return {layer.name for layer in layers[spatial[-1] + 1 :]}


def _match_head(model, layers, head):
    patterns = [head] if isinstance(head, str) else list(head)
    names = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(
                "`head` must be layer names or glob patterns (strings). "
                f"Received: head={head!r}"
            )
        matched = {layer.name for layer in layers if fnmatch.fnmatchcase(layer.name, pattern)}
        if not matched:
            raise ValueError(
                f"No layer of model {model.name!r} matches {pattern!r} in "
                f"`head`. Received: head={head!r}"
            )
        names |= matched
    return names


def freeze_backbone(model, *, head=None, train_bn=False):
    """Freezes a model's backbone for fine-tuning, in place.

    Args:
        model: a `keras.Model` (functional or Sequential; nested models such
            as a backbone used as a layer are walked into).
        head: the layers that stay trainable, as names or glob patterns
            (``"logits"``, ``("conv5_*", "logits")`` to fine-tune the last
            stage too). ``None`` (default): every top-level layer after the
            last one that outputs a 4D feature map (pooling, dropout, the
            classifier).
        train_bn: what `BatchNormalization` layers anywhere in the model do.
            ``False`` (default, the usual choice for small datasets): they are
            frozen, i.e. in inference mode, using and keeping their moving
            statistics, even inside ``head``. ``True``: they are trainable
            (batch statistics in training, moving statistics updated, gamma
            and beta learned), backbone included.

    Returns:
        ``model``, with ``trainable`` set on its layers. Compile it (again)
        afterwards: `compile()` takes the trainable weights as they are then.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    top = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    head_names = _default_head(model, top) if head is None else _match_head(model, top, head)
    model.trainable = True
    for layer in top:
        layer.trainable = True
        trainable = layer.name in head_names
        for leaf in _leaf_layers(layer):
            if isinstance(leaf, keras.layers.BatchNormalization):
                leaf.trainable = bool(train_bn)
            else:
                leaf.trainable = trainable
    return model


def unfreeze(model):
    """Makes every layer of ``model`` trainable again, in place (undoes
    `freeze_backbone`; BatchNorm layers train again too).

    Setting ``model.trainable = True`` alone does not reach the layers of a
    functional model that `freeze_backbone` set. Recompile afterwards.
    Returns ``model``.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    model.trainable = True
    for layer in model.layers:
        layer.trainable = True  # and, through it, its sublayers
    return model


def trainable_summary(model):
    """``(trainable, frozen)`` parameter counts of ``model``."""
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    frozen = sum(int(keras.ops.size(w)) for w in model.non_trainable_weights)
    return trainable, frozen
