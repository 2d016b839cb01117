"""SavedModel export of a causal-LM task: a `generate` signature over raw prompt strings.

`export_generate_model(task, "saved_models/NAME")` (also reached through
`tfft.export_saved_model` for a `tfft.CausalLMTask`) writes
`saved_models/NAME/<version>/` whose signature

    generate(prompts: tf.string [None], max_new_tokens: tf.int32 [])
        -> {"completions": tf.string [None]}

tokenises the prompts in the graph (chat template included when the task
uses one), decodes greedily with KerasHub's KV cache, stops at the end token
and detokenises: the tokenizer and LoRA adapters (merged into plain kernels)
are inside. The export is written in a hidden staging folder, reloaded in a
fresh Python process and compared with the in-memory model, then renamed into
place; any failure leaves nothing behind.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft._compat import write_export_archive
from tfft.export.fresh_process import SERVING_IMPORTS
from tfft.models.causal_lm import CausalLMTask
from tfft.utils.files import private_staging, rename_directory_exclusive, replace_directory
from tfft.utils.version import __version__

GENERATE_SIGNATURE = "generate"
PROMPTS_INPUT = "prompts"
MAX_NEW_TOKENS_INPUT = "max_new_tokens"
COMPLETIONS_OUTPUT = "completions"
METADATA_FILE = "tfft_metadata.json"
DEFAULT_SAMPLE_PROMPTS = ("The capital of France is", "Review: a delight.\nSentiment:")
_MARKER = "\u0000tfft-prompt\u0000"


class GenerateExportError(RuntimeError):
    """A generate export failed verification or could not be written."""


def _versions(directory):
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def generate_function(task: CausalLMTask) -> tf.types.experimental.GenericFunction:
    """The graph function the export serves: `(prompts, max_new_tokens) -> completions`."""
    tokenizer = task.tokenizer
    stop_ids = tf.constant(task._stop_token_ids() or [-1], tf.int32)
    pad_id = task._pad_id()
    limit = task.max_length
    step = task._generate_step_with(_greedy_sampler())
    prefix = suffix = ""
    if task.chat_template is not None:
        prefix, _, suffix = task.format_prompt(_MARKER).partition(_MARKER)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=PROMPTS_INPUT),
        tf.TensorSpec([], tf.int32, name=MAX_NEW_TOKENS_INPUT),
    ])
    def generate(prompts, max_new_tokens):
        tf.debugging.assert_positive(max_new_tokens, message="max_new_tokens must be > 0")
        texts = tf.strings.join([prefix, prompts, suffix]) if (prefix or suffix) else prompts
        ids = tokenizer(texts)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        tf.debugging.assert_positive(lengths, message="A prompt is empty")
        width = tf.reduce_max(lengths) + max_new_tokens
        if limit is not None:
            tf.debugging.assert_less_equal(
                width, limit, message=f"Prompt plus max_new_tokens exceeds the context of "
                                      f"{limit} tokens")
        batch = tf.shape(lengths)[0]
        token_ids = ids.to_tensor(default_value=pad_id, shape=tf.stack([batch, width]))
        mask = tf.sequence_mask(lengths, width)
        out = step({"token_ids": token_ids, "padding_mask": mask})["token_ids"]
        out = tf.cast(out, tf.int32)
        positions = tf.range(width)[tf.newaxis, :]
        start = lengths[:, tf.newaxis]
        generated = (positions >= start) & (positions < start + max_new_tokens)
        is_stop = tf.reduce_any(out[..., tf.newaxis] == stop_ids, axis=-1) & generated
        after_stop = tf.cumsum(tf.cast(is_stop, tf.int32), axis=1) > 0
        keep = generated & ~after_stop
        completions = tokenizer.detokenize(tf.ragged.boolean_mask(out, keep))
        return {COMPLETIONS_OUTPUT: completions}

    return generate


def _greedy_sampler():
    import keras_hub

    return keras_hub.samplers.GreedySampler()


def export_generate_model(task: CausalLMTask, directory: str, version: int | None = None,
                          overwrite: bool = False, metadata: dict | None = None,
                          sample_prompts: Sequence[str] | None = None,
                          max_new_tokens: int = 8, verify: bool = True) -> str:
    """Exports a causal-LM task as a SavedModel with a greedy `generate` signature.

    Args:
        task: `tfft.CausalLMTask`. LoRA adapters are merged first.
        directory: str. Model directory; the version goes below it.
        version: int. Defaults to the next free one.
        overwrite: bool. Replace an existing explicit version. Defaults to False.
        metadata: dict. Extra JSON metadata.
        sample_prompts: list of str. Prompts the verification generates from.
        max_new_tokens: int. New tokens in the verification. Defaults to 8.
        verify: bool. Reload in a fresh process and compare. Defaults to True.

    Returns:
        The version directory written.

    Example:

    >>> path = tfft.export_saved_model(task, "saved_models/smollm2_sst")
    >>> gen = tf.saved_model.load(path).signatures["generate"]
    >>> gen(prompts=tf.constant(["Review: great.\\nSentiment:"]), max_new_tokens=tf.constant(2))
    """
    if not isinstance(task, CausalLMTask):
        raise TypeError(f"export_generate_model needs a tfft.CausalLMTask. Received: "
                        f"{type(task).__name__}")
    if version is not None and (
            not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise ValueError(f"version must be a positive int. Received: version={version!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or (
            max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be a positive int. Received: {max_new_tokens!r}")
    prompts = list(sample_prompts or DEFAULT_SAMPLE_PROMPTS)
    plain = task.merge()
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"The export directory {directory!r} is a file, not a directory.")
    automatic = version is None
    version = version or max(_versions(directory), default=0) + 1
    target = os.path.join(directory, str(version))
    if not automatic and os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"The export version {target!r} already exists. Pass overwrite=True "
            "(--overwrite) to replace it, or leave version unset to write the next one."
        )
    with private_staging(target) as staging:
        fn = generate_function(plain)
        archive = keras.export.ExportArchive()
        archive.track(plain.causal_lm)
        if not plain.tokenizer.built:
            plain.tokenizer.build(None)
        archive.track(plain.tokenizer)
        archive.add_endpoint(GENERATE_SIGNATURE, fn)
        # Only the `generate` signature is served: saved as the traced concrete
        # function, it is not traced again inside `tf.saved_model.save`.
        write_export_archive(archive, staging, concrete_endpoints=True)
        info = {
            "task": "causal_lm",
            "signature": {"name": GENERATE_SIGNATURE,
                          "inputs": [PROMPTS_INPUT, MAX_NEW_TOKENS_INPUT],
                          "outputs": [COMPLETIONS_OUTPUT], "sampler": "greedy"},
            "backbone": type(plain.backbone).__name__,
            "chat_template": plain.chat_template is not None,
            "max_length": plain.max_length,
            "version": version,
            "tfft_version": __version__,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            **(metadata or {}),
        }
        _write_metadata(staging, info)
        if verify:
            expected = _decode(fn(tf.constant(prompts), tf.constant(max_new_tokens, tf.int32))[
                COMPLETIONS_OUTPUT])
            got = generate_in_fresh_process(staging, prompts, max_new_tokens)
            if got != expected:
                raise GenerateExportError(
                    "The reloaded SavedModel generates differently from the in-memory model: "
                    f"{got!r} != {expected!r}"
                )
        return _move_into_place(staging, directory, info, automatic, overwrite)


def _write_metadata(folder, info):
    with open(os.path.join(folder, METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, default=str)


def _move_into_place(staging, directory, info, automatic, overwrite):
    while True:
        target = os.path.join(directory, str(info["version"]))
        if overwrite and not automatic:
            return replace_directory(staging, target)
        try:
            return rename_directory_exclusive(staging, target)
        except FileExistsError:
            if not automatic:
                raise FileExistsError(
                    f"The export version {target!r} was written by another export while this "
                    "one ran; nothing was replaced."
                ) from None
        info["version"] = max(info["version"] + 1, max(_versions(directory), default=0) + 1)
        _write_metadata(staging, info)


def _decode(values):
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
            for v in np.asarray(values).reshape(-1)]


def resolve_export(path: str) -> str:
    """A version directory: `path` itself, or the newest version below it."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = _versions(path)
    if not versions:
        raise ValueError(
            f"{path!r} is not a SavedModel: expected a version directory with saved_model.pb "
            "or a model directory holding versions 1, 2, ... (written by tfft export)."
        )
    return os.path.join(path, str(versions[-1]))


def _register_text_ops():
    """KerasHub tokenizers use TensorFlow Text ops; loading needs them registered."""
    try:
        import tensorflow_text  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "Loading a generate export needs TensorFlow Text: pip install tensorflow-text"
        ) from error


def load_generate(path: str) -> Any:
    """Loads an exported `generate` signature: `fn(prompts, max_new_tokens) -> list of str`."""
    path = resolve_export(path)
    _register_text_ops()
    loaded = tf.saved_model.load(path)
    if GENERATE_SIGNATURE not in loaded.signatures:
        raise ValueError(
            f"The SavedModel at {path!r} has no {GENERATE_SIGNATURE!r} signature (it has "
            f"{sorted(loaded.signatures)}); export a causal-LM task to get one."
        )
    signature = loaded.signatures[GENERATE_SIGNATURE]

    def generate(prompts: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        out = signature(**{PROMPTS_INPUT: tf.constant(list(prompts)),
                           MAX_NEW_TOKENS_INPUT: tf.constant(int(max_new_tokens), tf.int32)})
        return _decode(out[COMPLETIONS_OUTPUT])

    generate.saved_model = loaded  # keeps the variables alive
    return generate


_FRESH_SCRIPT = SERVING_IMPORTS + r"""
import json
path, prompts_file, out_file, n = sys.argv[1:5]
with open(prompts_file, encoding="utf-8") as f:
    prompts = json.load(f)
fn = tf.saved_model.load(path).signatures["generate"]
out = fn(prompts=tf.constant(prompts), max_new_tokens=tf.constant(int(n), tf.int32))
texts = [v.decode("utf-8", errors="replace") for v in out["completions"].numpy()]
with open(out_file, "w", encoding="utf-8") as f:
    json.dump(texts, f)
"""


def generate_in_fresh_process(path: str, prompts: Sequence[str], max_new_tokens: int,
                              timeout: int = 600) -> list[str]:
    """Loads the export at `path` in a new Python process and generates from `prompts`."""
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file = os.path.join(tmp, "prompts.json")
        out_file = os.path.join(tmp, "out.json")
        with open(prompts_file, "w", encoding="utf-8") as f:
            json.dump(list(prompts), f)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONSAFEPATH": "1"}
        proc = subprocess.run(
            [sys.executable, "-c", _FRESH_SCRIPT, os.path.abspath(path), prompts_file,
             out_file, str(int(max_new_tokens))],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp,
        )
        if proc.returncode != 0:
            raise GenerateExportError(
                f"The SavedModel at {path!r} failed in a fresh process:\n{proc.stderr[-2000:]}"
            )
        with open(out_file, encoding="utf-8") as f:
            return json.load(f)
