"""Converts a llama-architecture GGUF file into a Hugging Face folder KerasHub loads.

KerasHub reads Hugging Face llama checkpoints (`config.json`,
`model.safetensors`, `tokenizer.json`, `tokenizer_config.json`) but not GGUF.
The offline SmolLM2-135M-Instruct ships only as a 4-bit GGUF, so it is
dequantised once into tfft's cache and loaded from there (converted again
when the GGUF file changes: an upgraded package).

Two details matter for correct outputs:

- llama.cpp's converter permutes the rows of `q_proj`/`k_proj` (it moves each
  head's rotary pairs from "halves" to "interleaved" order). Hugging Face
  (and KerasHub) rotate halves, so the permutation is undone here.
- KerasHub's llama converter ignores `rms_norm_eps`; the caller passes
  `layer_norm_epsilon` explicitly.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfft import assets
from tfft.backbones.offline_vision import source_stamp
from tfft.utils.files import staged_directory

SMOLLM2_CACHE_NAME = "smollm2_135m_instruct"
_DONE_MARKER = "tfft_conversion_done"


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _unpermute_rotary(weight, num_heads):
    """Inverts llama.cpp's `permute()` of q/k projection rows.

    llama.cpp reshapes rows as `(heads, 2, head_dim // 2)` and swaps the last
    two axes; the inverse reshapes as `(heads, head_dim // 2, 2)` and swaps back.
    """
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return (
        weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _hf_name(gguf_name):
    """Maps a GGUF llama tensor name to its Hugging Face name."""
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if parts[0] != "blk" or len(parts) != 4:
        return None
    layer, kind = parts[1], parts[2]
    names = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    if kind not in names:
        return None
    return f"model.layers.{layer}.{names[kind]}.weight"


def _tokenizer_files(reader):
    """Builds HF `tokenizer.json` and `tokenizer_config.json` from GGUF metadata."""
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(
            "Only byte-level BPE GGUF tokenizers can be converted. Expected "
            f"tokenizer.ggml.model='gpt2'. Received: {model!r}"
        )
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    token_types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = list(_field(reader, "tokenizer.ggml.merges"))
    control = 3  # gguf.TokenType.CONTROL
    added = [
        {
            "id": i, "content": tok, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True,
        }
        for i, (tok, kind) in enumerate(zip(tokens, token_types, strict=True))
        if kind == control
    ]
    tokenizer_json = {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                          "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                    "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": merges,
        },
    }
    bos_id = int(_field(reader, "tokenizer.ggml.bos_token_id", 1))
    eos_id = int(_field(reader, "tokenizer.ggml.eos_token_id", 2))
    unk_id = _field(reader, "tokenizer.ggml.unknown_token_id")
    pad_id = _field(reader, "tokenizer.ggml.padding_token_id")
    tokenizer_config = {
        "bos_token": tokens[bos_id],
        "eos_token": tokens[eos_id],
        "unk_token": tokens[int(unk_id)] if unk_id is not None else None,
        "pad_token": tokens[int(pad_id)] if pad_id is not None else None,
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "model_max_length": int(_field(reader, "llama.context_length", 2048)),
        "tokenizer_class": "GPT2Tokenizer",
    }
    chat_template = _field(reader, "tokenizer.chat_template")
    if chat_template:
        tokenizer_config["chat_template"] = chat_template
    return tokenizer_json, tokenizer_config, bos_id, eos_id


def _hf_config(reader, has_lm_head, bos_id, eos_id):
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(
            "Only llama-architecture GGUF files can be converted. "
            f"Received: general.architecture={arch!r}"
        )
    tokens = _field(reader, "tokenizer.ggml.tokens")
    heads = int(_field(reader, "llama.attention.head_count"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(_field(reader, "llama.vocab_size", len(tokens))),
        "hidden_size": int(_field(reader, "llama.embedding_length")),
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", heads)),
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048)),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "tie_word_embeddings": not has_lm_head,
        "hidden_act": "silu",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def convert_gguf_to_hf(
    gguf_path: str | os.PathLike, output_dir: str | os.PathLike
) -> str | os.PathLike:
    """Writes a llama GGUF file as a Hugging Face llama folder (float32).

    Args:
        gguf_path: str. Path of a llama-architecture `.gguf` file with a
            byte-level BPE tokenizer (any quantisation `gguf` can dequantise).
        output_dir: str. Folder to write `config.json`, `model.safetensors`,
            `tokenizer.json`, `tokenizer_config.json` into (created).

    Returns:
        `output_dir`.
    """
    import gguf
    from gguf import quants
    from safetensors.numpy import save_file

    reader = gguf.GGUFReader(gguf_path)
    names = {t.name for t in reader.tensors}
    tokenizer_json, tokenizer_config, bos_id, eos_id = _tokenizer_files(reader)
    config = _hf_config(reader, "output.weight" in names, bos_id, eos_id)
    tensors = {}
    for tensor in reader.tensors:
        hf_name = _hf_name(tensor.name)
        if hf_name is None:
            continue
        weight = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            weight = _unpermute_rotary(weight, config["num_attention_heads"])
        elif hf_name.endswith("k_proj.weight"):
            weight = _unpermute_rotary(weight, config["num_key_value_heads"])
        tensors[hf_name] = np.ascontiguousarray(weight)
    os.makedirs(output_dir, exist_ok=True)
    save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
    for filename, content in (
        ("config.json", config),
        ("tokenizer.json", tokenizer_json),
        ("tokenizer_config.json", tokenizer_config),
    ):
        with open(os.path.join(output_dir, filename), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False)
    return output_dir


def _converted(path, stamp):
    """True when `path` holds a finished conversion of the file `stamp` describes."""
    try:
        with open(os.path.join(path, _DONE_MARKER), encoding="utf-8") as f:
            return json.load(f) == stamp
    except (OSError, ValueError):
        return False


def smollm2_preset_dir() -> str:
    """Returns the cached HF folder of the offline SmolLM2-135M-Instruct, converting once.

    The folder is reused while the GGUF file is the same: its
    `source_stamp` (name, size, modification time) is written into the
    folder's marker file and checked on every call, so an upgraded package is
    converted again. The conversion writes into a temporary folder next to
    the cache entry and renames it into place, so an interrupted or
    concurrent run never leaves a half-written preset behind.
    """
    parent = assets.cache_dir("presets")
    target = os.path.join(parent, SMOLLM2_CACHE_NAME)
    gguf_path = assets.asset_path("smollm2")
    stamp = source_stamp(gguf_path)

    def converted(path):
        return _converted(path, stamp)

    if converted(target):
        return target
    with staged_directory(target, is_complete=converted) as staging:
        convert_gguf_to_hf(gguf_path, staging)
        with open(os.path.join(staging, _DONE_MARKER), "w", encoding="utf-8") as f:
            json.dump(stamp, f)
    return target
