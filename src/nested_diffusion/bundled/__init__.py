"""The bundled Fashion-MNIST model: UNet denoiser and feature classifier (weights ship in ``weights/``), data
loading, training, the quality gate and the Table 2 experiment. Built on the library; the library never imports it."""
from .unet import TinyUNet
from .classifier import FashionClassifier
from .pretrained import bundled_model_path, bundled_classifier_path, load_bundled_model, load_bundled_classifier
from .denoiser import (DEFAULT_GUIDANCE, DEMO_GUIDANCE, DTYPES, RUN_DEFAULTS, compute_dtype, load_unet, make_denoiser,
                       parse_classes)

__all__ = ["TinyUNet", "FashionClassifier", "bundled_model_path", "bundled_classifier_path",
           "load_bundled_model", "load_bundled_classifier", "DEFAULT_GUIDANCE", "DEMO_GUIDANCE", "RUN_DEFAULTS", "load_unet", "make_denoiser",
           "parse_classes", "DTYPES", "compute_dtype"]
