"""The model families and the name -> builder registry.

Names follow timm: a model name (``"seresnext50_32x4d"``) or, for published
weights, ``model.tag`` (``"seresnext50_32x4d.racm_in1k"``; see
`keras_senet.zoo`). A bare name with ``weights="imagenet"`` loads the
model's default tag, the first in timm's order.
"""

from keras_senet.models import inception
from keras_senet.models import senet

# Every builder, by registry name (timm-style names).
MODELS = dict(senet.BUILDERS)
MODELS.update(inception.BUILDERS)


def list_models(pattern=None, pretrained=False):
    """Names of the available models, sorted; ``pattern`` is a glob.

    With ``pretrained=True``: every loadable ``model.tag`` instead (each a
    checkpoint that ``create_model(name, weights="imagenet")`` loads).
    """
    if pretrained:
        from keras_senet import zoo

        return zoo.list_weights(pattern)
    import fnmatch

    names = sorted(MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def _split(name, argument="name"):
    """``(model, record or None)`` for a model or ``model.tag`` name."""
    # The registry is imported on use, so that `python -m keras_senet.zoo`
    # finds it unimported (the package imports this module).
    from keras_senet import zoo

    if not isinstance(name, str):
        raise ValueError(
            f"`{argument}` must be a model name (a string). "
            f"Received: {argument}={name!r}"
        )
    model, dot, tag = name.partition(".")
    if model not in MODELS:
        raise ValueError(
            f"Unknown model name. Expected one of {sorted(MODELS)} (or "
            f"model.tag, see list_models(pretrained=True)). "
            f"Received: {argument}={name!r}"
        )
    if not dot:
        return model, None
    record = zoo.REGISTRY.get(name)
    if record is None:
        raise ValueError(
            f"Unknown tag {tag!r} for model {model!r}. Its tags: "
            f"{zoo.tags(model) or 'none (no published weights)'}. "
            f"Received: {argument}={name!r}"
        )
    return model, record


def input_config(name):
    """How model ``name`` (or ``model.tag``) expects its images, as data for
    input pipelines.

    Returns a dict: ``mean`` and ``std`` (on the [0, 1] scale: inputs are
    ``(x / 255 - mean) / std``), ``channel_order`` (``"rgb"``, or ``"bgr"``:
    channels reversed after normalising, with mean/std in RGB order), and
    the evaluation transform: ``input_size``, ``crop_pct`` and
    ``interpolation`` (for published weights, the tag's own: its test size
    and test crop; a bare name means its default tag); plus
    ``train_input_size`` and ``train_crop_pct``, the size the weights were
    trained at. This is the same computation as the model's preprocessing
    function.
    """
    from keras_senet.imagenet import IMAGENET_MEAN
    from keras_senet.imagenet import IMAGENET_STD

    from keras_senet import zoo

    model, record = _split(name)
    if model in inception.VARIANTS:
        variant = inception.VARIANTS[model]
        size = variant["default_size"]
        return dict(
            variant["normalization"],
            input_size=size,
            crop_pct=0.875,
            interpolation="bilinear",
            train_input_size=size,
            train_crop_pct=0.875,
        )
    record = record or zoo.find(model)
    if record is None:
        return dict(
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            channel_order="rgb",
            input_size=224,
            crop_pct=0.875,
            interpolation="bilinear",
            train_input_size=224,
            train_crop_pct=0.875,
        )
    return dict(
        mean=record.mean,
        std=record.std,
        channel_order="rgb",
        input_size=record.eval_size,
        crop_pct=record.eval_crop_pct,
        interpolation=record.interpolation,
        train_input_size=record.input_size,
        train_crop_pct=record.crop_pct,
    )


def create_model(model_name, /, **kwargs):
    """Builds the model registered as ``model_name`` (see `list_models()`).

    ``model_name`` is a model name or timm's ``model.tag`` of published
    weights (``list_models(pretrained=True)``): with ``weights="imagenet"``
    the tag's checkpoint is loaded (a bare name loads the default tag), and a
    tag with another number of classes than ImageNet-1k's (the ImageNet-12k
    backbones, 11,821) builds its own head unless ``classes`` is given.
    Keyword arguments go to the builder (``weights``, ``include_top``,
    ``input_shape``, ``classes``, ``name``, ...).
    """
    from keras_senet import zoo

    model, record = _split(model_name, "model_name")
    if record is not None:
        weights = kwargs.get("weights")
        if weights == "imagenet":
            kwargs["weights"] = record.name
        elif isinstance(weights, str) and zoo.find(model, weights) not in (None, record):
            raise ValueError(
                f"`weights` names other published weights than the tag in "
                f"model_name={model_name!r}. Pass the tag once. "
                f"Received: weights={weights!r}"
            )
        if "classes" not in kwargs and kwargs.get("include_top", True):
            kwargs["classes"] = record.num_classes
    return MODELS[model](**kwargs)


def download_weights(names=None):
    """Downloads, verifies and converts published weights into the cache.

    Args:
        names: ``model.tag`` or model names (see
            ``list_models(pretrained=True)``), or None for all.

    Returns:
        ``{model.tag: [paths]}``: the downloaded checkpoint and the converted
        ``.weights.h5`` of each.
    """
    from keras_senet import pretrained
    from keras_senet import zoo

    if isinstance(names, str):
        names = [names]
    records = [zoo.get_weights_info(n) for n in (zoo.list_weights() if names is None else names)]
    paths = {}
    for record in records:
        create_model(record.name, weights="imagenet", input_shape=(None, None, 3))
        paths[record.name] = pretrained.cached_files(record)
    return paths
