"""Model architectures, the normalising wrapper, checkpoint loading and the zoo."""

from .nets import ImageClassifier, build_model
from .weights import load_weights, save_weights, weights_sha256

__all__ = ["ImageClassifier", "build_model", "load_weights", "save_weights", "weights_sha256"]
