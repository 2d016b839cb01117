"""Models: `build_model` composes a backbone, a head and a freeze policy."""

from tfft.models.builder import build_model, check_labels

__all__ = ["build_model", "check_labels"]
