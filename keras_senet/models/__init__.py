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
