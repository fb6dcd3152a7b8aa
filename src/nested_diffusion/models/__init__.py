"""Bundled models: the small Fashion-MNIST UNet denoiser and the feature classifier."""
from .unet import TinyUNet
from .classifier import FashionClassifier
from .pretrained import bundled_model_path, bundled_classifier_path, load_bundled_model, load_bundled_classifier

__all__ = ["TinyUNet", "FashionClassifier", "bundled_model_path", "bundled_classifier_path",
           "load_bundled_model", "load_bundled_classifier"]
