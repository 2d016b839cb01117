"""Models: `Task` (backbone + preprocessor + head) and `build_model`, which composes one;
`CausalLMTask` (a causal LM fine-tuned on completions) and `build_causal_lm`."""

from tfft.models.builder import build_model, check_labels
from tfft.models.causal_lm import CausalLMTask, build_causal_lm
from tfft.models.task import Task

__all__ = ["CausalLMTask", "Task", "build_causal_lm", "build_model", "check_labels"]
