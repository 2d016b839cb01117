"""Prompt learning: templates, zero/few-shot classifiers and soft prompt tuning.

- `PromptTemplate`, `LabelTemplate`, `Verbalizer`, `TemplateEnsemble`: prompts as
  validated objects.
- `ZeroShotEncoderClassifier`: sentence-embedding similarity (MiniLM by default).
- `CausalLMClassifier`: label-word log-likelihood under any KerasHub causal LM,
  zero- or few-shot; `load_smollm2()` / `load_causal_lm("offline:smollm2")` give
  the offline SmolLM2-135M-Instruct.
- `ZeroShotImageClassifier`: CLIP image-text zero-shot.
- `few_shot_fit`: contrastive few-shot fine-tuning of a sentence encoder on
  pairs of a few labelled texts per class (SetFit's recipe), then the head,
  optionally from the zero-shot label prompts; `make_pairs`, `sample_shots`.
- `SoftPrompt`, `build_soft_prompt_classifier`, `build_soft_prompt_causal_lm`:
  prompt tuning of a frozen BERT- or Llama-family backbone.
"""

from tfft.prompting.causal_lm import (
    CausalLMClassifier,
    CausalLMScorer,
    load_causal_lm,
    load_smollm2,
)
from tfft.prompting.clip import ZeroShotImageClassifier
from tfft.prompting.encoder import (
    SentenceEmbedder,
    ZeroShotEncoderClassifier,
    build_zero_shot_model,
)
from tfft.prompting.few_shot import few_shot_fit, make_pairs, sample_shots
from tfft.prompting.gguf_llama import convert_gguf_to_hf, smollm2_preset_dir
from tfft.prompting.soft_prompt import (
    PromptPaddingMask,
    SoftPrompt,
    SoftPromptDecoder,
    SoftPromptModel,
    SoftPromptPooling,
    StripPrompt,
    build_soft_prompt_causal_lm,
    build_soft_prompt_classifier,
    count_trainable_params,
)
from tfft.prompting.templates import LabelTemplate, PromptTemplate, TemplateEnsemble, Verbalizer

__all__ = [
    "CausalLMClassifier",
    "CausalLMScorer",
    "LabelTemplate",
    "PromptPaddingMask",
    "PromptTemplate",
    "SentenceEmbedder",
    "SoftPrompt",
    "SoftPromptDecoder",
    "SoftPromptModel",
    "SoftPromptPooling",
    "StripPrompt",
    "TemplateEnsemble",
    "Verbalizer",
    "ZeroShotEncoderClassifier",
    "ZeroShotImageClassifier",
    "build_soft_prompt_causal_lm",
    "build_soft_prompt_classifier",
    "build_zero_shot_model",
    "convert_gguf_to_hf",
    "count_trainable_params",
    "few_shot_fit",
    "load_causal_lm",
    "load_smollm2",
    "make_pairs",
    "sample_shots",
    "smollm2_preset_dir",
]
