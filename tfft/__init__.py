"""tfft: fine-tune pretrained models with Keras 3 on TensorFlow."""

from tfft._backend import ensure_tensorflow_backend

ensure_tensorflow_backend()

from tfft.backbones import Backbone, BackboneInfo, list_backbones, load_backbone  # noqa: E402

__version__ = "0.1.0"

__all__ = sorted(["Backbone", "BackboneInfo", "list_backbones", "load_backbone"])
