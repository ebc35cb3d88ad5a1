"""The model families and the name -> builder registry."""

from keras_senet.models import inception
from keras_senet.models import senet

# Every builder, by registry name (timm-style names).
MODELS = dict(senet.BUILDERS)
MODELS.update(inception.BUILDERS)


def list_models(pattern=None):
    """Names of the available models, sorted; ``pattern`` is a glob."""
    import fnmatch

    names = sorted(MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def input_config(name):
    """How model ``name`` expects its images, as data for input pipelines.

    Returns a dict: ``mean`` and ``std`` (on the [0, 1] scale: inputs are
    ``(x / 255 - mean) / std``), ``channel_order`` (``"rgb"``, or ``"bgr"``:
    channels reversed after normalising, with mean/std in RGB order),
    ``input_size``, ``crop_pct`` and ``interpolation`` (the eval transform;
    the published weights' own where they exist). This is the same
    computation as the model's preprocessing function.
    """
    from keras_senet import zoo
    from keras_senet.imagenet import IMAGENET_MEAN
    from keras_senet.imagenet import IMAGENET_STD

    if name not in MODELS:
        raise ValueError(
            f"Unknown model name. Expected one of {sorted(MODELS)}. "
            f"Received: name={name!r}"
        )
    if name in inception.VARIANTS:
        variant = inception.VARIANTS[name]
        return dict(
            variant["normalization"],
            input_size=variant["default_size"],
            crop_pct=0.875,
            interpolation="bilinear",
        )
    config = dict(
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        channel_order="rgb",
        input_size=224,
        crop_pct=0.875,
        interpolation="bilinear",
    )
    if name in zoo.REGISTRY:
        info = zoo.REGISTRY[name]
        config.update(
            mean=info.mean,
            std=info.std,
            input_size=info.input_size,
            crop_pct=info.crop_pct,
            interpolation=info.interpolation,
        )
    return config


def create_model(name, **kwargs):
    """Builds the model registered as ``name`` (see `list_models()`).

    Keyword arguments go to the builder (``weights``, ``include_top``,
    ``input_shape``, ``classes``, ...).
    """
    if name not in MODELS:
        raise ValueError(
            f"Unknown model name. Expected one of {sorted(MODELS)}. "
            f"Received: name={name!r}"
        )
    return MODELS[name](**kwargs)
