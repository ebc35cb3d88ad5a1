"""keras-senet: Squeeze-and-Excitation networks for Keras 3."""

from keras_senet.conv import GroupConv2D
from keras_senet.imagenet import decode_predictions
from keras_senet.imagenet import preprocess_input
from keras_senet.layers import SqueezeExcite
from keras_senet.models import create_model
from keras_senet.models import list_models
from keras_senet.models.inception import SEBNInception
from keras_senet.models.inception import SEInceptionResNetV2
from keras_senet.models.inception import SEInceptionV3
from keras_senet.models.senet import SENet154
from keras_senet.models.senet import SEResNet18
from keras_senet.models.senet import SEResNet34
from keras_senet.models.senet import SEResNet50
from keras_senet.models.senet import SEResNet101
from keras_senet.models.senet import SEResNet152
from keras_senet.models.senet import SEResNet152D
from keras_senet.models.senet import SEResNeXt26
from keras_senet.models.senet import SEResNeXt50
from keras_senet.models.senet import SEResNeXt101
from keras_senet.models.senet import SEResNeXt101_32x8d
from keras_senet.models.senet import SEResNeXt101_64x4d
from keras_senet.models.senet import SEResNeXt101D_32x8d
from keras_senet.models.senet import SEResNeXt26D_32x4d
from keras_senet.models.senet import SEResNeXt26T_32x4d
from keras_senet.models.senet import SEResNeXtAA101D_32x8d
from keras_senet.models.senet import SEResNeXtAA201D_32x8d
from keras_senet.features import feature_extractor
from keras_senet.features import feature_info
from keras_senet.finetune import freeze_backbone
from keras_senet.surgery import add_squeeze_excite

__version__ = "0.1.0"

# Imported on first use (the weights registry, the loader, analysis, export),
# so that `python -m keras_senet.zoo` and `python -m keras_senet.analysis` run
# their modules only once.
_LAZY = {
    "download_weights": ("keras_senet.models", "download_weights"),
    "get_weights_info": ("keras_senet.zoo", "get_weights_info"),
    "list_weights": ("keras_senet.zoo", "list_weights"),
    "zoo": ("keras_senet.zoo", None),
    "pretrained": ("keras_senet.pretrained", None),
    "analysis": ("keras_senet.analysis", None),
    "export": ("keras_senet.export", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_senet' has no attribute {name!r}")
    import importlib

    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
