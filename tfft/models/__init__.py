"""Models: `Task` (backbone + preprocessor + head) and `build_model`, which composes one."""

from tfft.models.builder import build_model, check_labels
from tfft.models.task import Task

__all__ = ["Task", "build_model", "check_labels"]
