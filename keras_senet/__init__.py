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
from keras_senet.models.senet import SEResNeXt26
from keras_senet.models.senet import SEResNeXt50
from keras_senet.models.senet import SEResNeXt101
from keras_senet.zoo import download_weights
from keras_senet.zoo import list_weights
from keras_senet import analysis
from keras_senet import export
from keras_senet.features import feature_extractor
from keras_senet.features import feature_info
from keras_senet.finetune import freeze_backbone
from keras_senet.surgery import add_squeeze_excite

__version__ = "0.1.0"
