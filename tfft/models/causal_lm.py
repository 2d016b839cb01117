"""`CausalLMTask`: instruction/completion fine-tuning and generation of GPT-style models.

`build_causal_lm("offline:smollm2", freeze="lora:8")` (also reached through
`tfft.build_model(..., task="causal_lm")`) wraps a KerasHub `CausalLM`
(Llama, GPT-2, Mistral, ... and the offline SmolLM2-135M-Instruct) in a
`keras.Model` that:

- trains on prompt/completion pairs or plain text (`tfft.data.completions`)
  with the loss on completion tokens only, batches of similar length, and the
  model's own chat template when asked (`chat_template=True`);
- adapts with LoRA on the attention projections (`lora_mlp=True`: the MLP
  too) through `tfft.LoRA`, saves the adapters alone (`save_adapters`, a
  small `.npz`), loads them onto a fresh base (`load_adapters`) and merges
  them into plain kernels (`merge`);
- generates with KerasHub's cached decoding (`generate`), greedy, top-k or
  top-p, batched, with stop strings;
- measures held-out perplexity (`perplexity`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from tfft._compat import dense_kernel_variable
from tfft.adapt import FreezePolicy, LoRA, parse_freeze
from tfft.adapt.freeze import Full
from tfft.backbones.causal_lm import (
    CAUSAL_LM_SPEC_FORMS,
    load_causal_lm,
    preset_directory,
    read_chat_template,
    read_context_length,
    register_tokenizer_classes,
    render_chat_prompt,
    tokenizer_config_with_special_tokens,
)
from tfft.models.task import _LoRAState
from tfft.training.checkpointing import checkpoint_layers
from tfft.training.tracing import SingleTrainFunction, build_for_training
from tfft.utils.tfdata import continuous_epochs
from tfft.utils.walk import walk_layers

if TYPE_CHECKING:
    from tfft.data.completions import TokenizedCompletions


def _backbone_config(backbone):
    """The backbone's config, with `tie_word_embeddings` where the backbone has one:
    KerasHub 0.32's Llama `get_config` leaves it out, so a tied model (SmolLM2) would
    come back from its config with an extra, untied output embedding."""
    config = backbone.get_config()
    if hasattr(backbone, "tie_word_embeddings"):
        config.setdefault("tie_word_embeddings", bool(backbone.tie_word_embeddings))
    return config


def _completions():
    """`tfft.data.completions`, imported on first use: importing the `tfft.data` package
    loads TensorFlow Datasets, which `import tfft` (and so this module) must not."""
    from tfft.data import completions

    return completions

logger = logging.getLogger(__name__)

SAMPLERS = ("greedy", "top_k", "top_p")
CAUSAL_LM_FREEZE_FORMS = ("'lora:R' (R a positive int)", "'full'", "a tfft.LoRA(...)")
ATTENTION_TARGET = r"(query|key|value|attention_output)(_dense)?$"
MLP_TARGET = r"feedforward\w*$|(intermediate|output)_dense$"
ADAPTER_FORMAT = "tfft_lora_adapters"
DEFAULT_SEQUENCE_LENGTH = 256


def _is_causal_lm(model):
    import keras_hub

    return isinstance(model, keras_hub.models.CausalLM)


@keras.saving.register_keras_serializable(package="tfft")
class CausalLMTask(SingleTrainFunction, keras.Model):
    """A causal language model being fine-tuned: training, generation, adapters.

    Build one with `tfft.build_model(spec, task="causal_lm", freeze="lora:8")`
    or `build_causal_lm`; the constructor wraps a built KerasHub `CausalLM`.
    Its inputs are `{"token_ids", "padding_mask"}`; its outputs next-token
    logits. `fit`, `perplexity` and `generate` take raw text.

    Args:
        causal_lm: `keras_hub.models.CausalLM` with a preprocessor.
        freeze_policy: FreezePolicy, str, dict or None. Recorded and kept in
            the config (a LoRA policy is applied again on reload).
        chat_template: str or None. The model's chat template; when set,
            prompts are formatted with it for training and generation.
        sequence_length: int. Longest training input (prompt + completion).
            Defaults to 256.
        context_length: int. Longest sequence (prompt + generated) the model
            handles; defaults to the backbone's `max_sequence_length` (None
            for rotary models such as Llama: no check).
        gradient_checkpointing: bool. Recompute each transformer block's
            activations in the backward pass instead of keeping them
            (`tfft.training.checkpointing`): less memory for long sequences
            and large batches, about one more forward pass of time. Defaults
            to False.

    Example:

    >>> task = tfft.build_model("offline:smollm2", task="causal_lm", freeze="lora:8")
    >>> task.fit([("2 + 2 =", " 4")], epochs=1)
    >>> task.generate(["2 + 3 ="], max_new_tokens=3)
    """

    def __init__(self, causal_lm: keras.Model, freeze_policy: FreezePolicy | str | Mapping |
                 None = None, chat_template: str | None = None,
                 sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
                 context_length: int | None = None, gradient_checkpointing: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not _is_causal_lm(causal_lm):
            raise TypeError(
                "CausalLMTask needs a keras_hub.models.CausalLM. Received: "
                f"{type(causal_lm).__name__}"
            )
        if causal_lm.preprocessor is None:
            raise ValueError("CausalLMTask needs a causal LM with a preprocessor (a tokenizer).")
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or (
                sequence_length < 2):
            raise ValueError(
                f"sequence_length must be an int >= 2. Received: {sequence_length!r}"
            )
        self.causal_lm = causal_lm
        self.chat_template = chat_template
        self.sequence_length = int(sequence_length)
        self.context_length = None if context_length is None else int(context_length)
        if not isinstance(gradient_checkpointing, bool):
            raise ValueError("gradient_checkpointing must be True or False. Received: "
                             f"{gradient_checkpointing!r}")
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            checkpoint_layers(_transformer_blocks(causal_lm.backbone))
        # Keras saves LoRA layers merged; this layer keeps the base kernels and the
        # adapters apart in the .keras file and puts them back on load.
        self.lora_state = _LoRAState(name="lora_state")
        object.__setattr__(self.lora_state, "_task_ref", weakref.ref(self))
        object.__setattr__(self, "_freeze_policy", None)
        object.__setattr__(self, "_generate_fns", {})
        object.__setattr__(self, "_forward_fn", None)
        if freeze_policy is not None:
            if isinstance(freeze_policy, Mapping):
                freeze_policy = FreezePolicy.from_dict(dict(freeze_policy))
            object.__setattr__(self, "_freeze_policy", parse_freeze(freeze_policy))
        self.built = True

    # -- the parts -------------------------------------------------------------------

    @property
    def backbone(self) -> keras.Model:
        """The KerasHub backbone (transformer layers, embeddings)."""
        return self.causal_lm.backbone

    @property
    def preprocessor(self) -> keras.layers.Layer:
        """The KerasHub causal-LM preprocessor (tokenizer inside)."""
        return self.causal_lm.preprocessor

    @property
    def tokenizer(self) -> keras.layers.Layer:
        return self.causal_lm.preprocessor.tokenizer

    @property
    def freeze_policy(self) -> FreezePolicy | None:
        """The adaptation applied: a `tfft.LoRA`, `Full()` or None."""
        return self._freeze_policy

    @property
    def task(self) -> str:
        return "causal_lm"

    @property
    def max_length(self) -> int | None:
        """Longest sequence (prompt + generated tokens) the backbone accepts."""
        if self.context_length is not None:
            return self.context_length
        value = getattr(self.backbone, "max_sequence_length", None)
        return int(value) if value else None

    def call(self, inputs, training=None):
        return self.causal_lm(inputs, training=training)

    def freeze(self, policy: FreezePolicy | str, lora_mlp: bool = False) -> FreezePolicy:
        """Applies `"lora:R"`/`tfft.LoRA(...)` or `"full"`; returns the policy.

        Recompile before `fit` (`compile()`): Keras builds the train step with
        the trainable variables of the moment.
        """
        policy = causal_lm_policy(policy, lora_mlp=lora_mlp)
        if isinstance(policy, LoRA):
            _apply_lora(self.backbone, policy)
        else:
            self.backbone.trainable = True
            for variable in self.backbone.variables:
                variable.trainable = True
        object.__setattr__(self, "_freeze_policy", policy)
        return policy

    def trainable_parameter_count(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.trainable_variables))

    def parameter_count(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.backbone.weights))

    # -- training ---------------------------------------------------------------------

    def compile(self, optimizer: Any = "auto", learning_rate: float | None = None,
                total_steps: int | None = None, **kwargs: Any) -> None:
        """Compiles for next-token training with the loss on weighted (completion) tokens.

        Args:
            optimizer: `"auto"` (AdamW, 2e-4 for LoRA, 2e-5 for full
                fine-tuning) or a Keras optimizer.
            learning_rate: float. For `"auto"`. Defaults to None (see above).
            total_steps: int. For `"auto"`: the training steps to come; the
                rate then warms up linearly over the first tenth and follows a
                cosine down to zero (`keras.optimizers.schedules.CosineDecay`).
                Defaults to None: a constant rate.
            **kwargs: passed to `keras.Model.compile`.
        """
        if optimizer == "auto":
            if learning_rate is None:
                learning_rate = 2e-4 if isinstance(self.freeze_policy, LoRA) else 2e-5
            rate: Any = learning_rate
            if total_steps is not None:
                _check_positive_int("total_steps", total_steps)
                warmup = max(1, total_steps // 10)
                rate = keras.optimizers.schedules.CosineDecay(
                    0.0, decay_steps=max(total_steps - warmup, 1), warmup_target=learning_rate,
                    warmup_steps=warmup)
            optimizer = keras.optimizers.AdamW(learning_rate=rate, weight_decay=0.0)
        kwargs.setdefault("loss", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"))
        kwargs.setdefault("weighted_metrics", [keras.metrics.SparseCategoricalAccuracy(
            name="accuracy")])
        # Batches vary in length: XLA would compile the whole model again per shape.
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self) -> None:
        # Not saved: `fit` compiles a reloaded task with the defaults (or call compile).
        return None

    def format_prompt(self, prompt: str, chat_template: bool | None = None) -> str:
        """The prompt as the model sees it (with the chat template when it applies)."""
        use = self.chat_template is not None if chat_template is None else chat_template
        if not use:
            return prompt
        if self.chat_template is None:
            raise ValueError(
                "chat_template=True but the model ships no chat template; build the task "
                "from a folder whose tokenizer_config.json has one, or pass "
                "chat_template=False."
            )
        return render_chat_prompt(self.chat_template, prompt)[0]

    def tokenize_data(self, data: Any) -> TokenizedCompletions:
        """Reads and tokenises training data (see `tfft.data.read_completions`)."""
        completions = _completions()
        data = completions.read_completions(data)
        if data.prompts is not None and self.chat_template is not None:
            data = completions.CompletionData(
                prompts=[self.format_prompt(p) for p in data.prompts],
                completions=list(data.completions))
        tokenizer = self.tokenizer
        return completions.tokenize_completions(
            data, self._tokenize_many, self.sequence_length,
            end_token_id=getattr(tokenizer, "end_token_id", None),
            start_token_id=getattr(tokenizer, "start_token_id", None)
            if self.preprocessor.add_start_token else None,
        )

    def make_dataset(self, data: Any, batch_size: int = 8, shuffle: bool = False,
                     seed: int | None = None) -> tf.data.Dataset:
        """Length-bucketed batches `(inputs, targets, completion weights)` of raw data."""
        completions = _completions()
        examples = (data if isinstance(data, completions.TokenizedCompletions)
                    else self.tokenize_data(data))
        _check_positive_int("batch_size", batch_size)
        return completions.bucketed_dataset(examples, batch_size, self.sequence_length,
                                            shuffle=shuffle, seed=seed,
                                            pad_token_id=self._pad_id())

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_data=None, shuffle=True, seed=None, **kwargs):
        """Trains on raw data: pairs, texts, a CSV/JSONL path (see `read_completions`).

        A `tf.data.Dataset` from `make_dataset` (or of the same structure) is
        used as it is.
        """
        if y is not None:
            raise ValueError(
                "CausalLMTask.fit takes the data as x (pairs, texts, a file or a dataset); "
                f"y must be None. Received: y of type {type(y).__name__}"
            )
        if not self.compiled:
            self.compile()
        batch_size = batch_size or 8
        train = x if _is_token_dataset(x) else self.make_dataset(
            x, batch_size=batch_size, shuffle=shuffle, seed=seed)
        if validation_data is not None and not _is_token_dataset(validation_data):
            validation_data = self.make_dataset(validation_data, batch_size=batch_size)
        # The optimizer's variables now, not inside the first trace of the train
        # step: that trace would run twice (SmolLM2 with LoRA, 2 CPU cores: 74 s of
        # tracing before the first step instead of 30 s).
        build_for_training(self, train.element_spec, callbacks)
        train, kwargs["steps_per_epoch"] = continuous_epochs(train, kwargs.get("steps_per_epoch"))
        return super().fit(train, epochs=epochs, verbose=verbose, callbacks=callbacks,
                           validation_data=validation_data, shuffle=False, **kwargs)

    def perplexity(self, data: Any, batch_size: int = 8) -> dict:
        """Mean loss and perplexity over the weighted (completion) tokens of `data`.

        Returns:
            `{"loss": mean negative log-likelihood per token, "perplexity":
            exp(loss), "tokens": tokens scored}`.
        """
        forward = self._forward()
        total, count = 0.0, 0.0
        for inputs, targets, weights in self.make_dataset(data, batch_size=batch_size):
            logits = tf.cast(forward(inputs["token_ids"], inputs["padding_mask"]), tf.float32)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
            total += float(tf.reduce_sum(nll * weights))
            count += float(tf.reduce_sum(weights))
        loss = total / count
        return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(count)}

    def score_completions(self, prompts: Sequence[str], candidates: Sequence[str],
                          batch_size: int = 8, chat_template: bool | None = None
                          ) -> np.ndarray:
        """Log-likelihood of each candidate completion after each prompt.

        Tokenised as in training (the formatted prompt, then the completion),
        so a task tuned on `(prompt, label)` pairs is scored the way it learnt:
        `score_completions(prompts, [" negative", " positive"]).argmax(-1)`
        classifies without generating, and the untuned task gives the
        zero-shot answer of the same kind.

        Returns:
            float array `(len(prompts), len(candidates))`: the sum of the
            candidate tokens' log-probabilities.
        """
        prompts, candidates = list(prompts), list(candidates)
        for name, values in (("prompts", prompts), ("candidates", candidates)):
            if not values or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"{name} must be a non-empty list of non-empty strings. "
                                 f"Received: {values[:3]!r}")
        _check_positive_int("batch_size", batch_size)
        prompt_ids = self._tokenize_many([self.format_prompt(p, chat_template) for p in prompts])
        candidate_ids = self._tokenize_many(candidates)
        rows = [(i, j, list(p) + list(c), len(p)) for i, p in enumerate(prompt_ids)
                for j, c in enumerate(candidate_ids)]
        if self.max_length is not None:
            for i, j, ids, _ in rows:
                if len(ids) > self.max_length:
                    raise ValueError(
                        f"Prompt {i} with candidate {j} is {len(ids)} tokens; the model's "
                        f"context is {self.max_length}. Shorten the prompt."
                    )
        forward = self._forward()
        scores = np.zeros((len(prompts), len(candidates)))
        order = sorted(range(len(rows)), key=lambda k: len(rows[k][2]))
        for start in range(0, len(order), batch_size):
            batch = [rows[k] for k in order[start:start + batch_size]]
            width = max(len(ids) for _, _, ids, _ in batch)
            token_ids = np.full((len(batch), width), self._pad_id(), np.int32)
            mask = np.zeros((len(batch), width), bool)
            for b, (_, _, ids, _) in enumerate(batch):
                token_ids[b, :len(ids)] = ids
                mask[b, :len(ids)] = True
            log_probs = tf.nn.log_softmax(tf.cast(
                forward(tf.constant(token_ids), tf.constant(mask)), tf.float32)).numpy()
            for b, (i, j, ids, length) in enumerate(batch):
                positions = np.arange(length - 1, len(ids) - 1)
                scores[i, j] = float(log_probs[b, positions, ids[length:]].sum())
        return scores

    # -- generation ---------------------------------------------------------------------

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 32,
                 sampler: str = "greedy", temperature: float = 1.0, top_k: int = 10,
                 top_p: float = 0.9, stop: str | Sequence[str] | None = None,
                 batch_size: int = 8, seed: int | None = None,
                 chat_template: bool | None = None,
                 callback: Callable[[int, str], None] | None = None) -> str | list[str]:
        """Generates completions with KerasHub's cached (KV-cache) decoding.

        Args:
            prompts: str or list of str.
            max_new_tokens: int. Tokens generated at most per prompt.
            sampler: str. One of `"greedy"`, `"top_k"`, `"top_p"`.
            temperature: float. Softmax temperature for the random samplers.
            top_k: int. Candidates for `"top_k"`. Defaults to 10.
            top_p: float. Probability mass for `"top_p"`. Defaults to 0.9.
            stop: str or list of str. Completions are cut before the first
                stop string. Generation always ends at the end token.
            batch_size: int. Prompts decoded together (similar lengths are
                grouped). Defaults to 8.
            seed: int. Seed for the random samplers.
            chat_template: bool. Format prompts with the chat template;
                defaults to what the task was built with.
            callback: callable `(index, completion)`, called as each batch's
                completions are ready (in prompt order within the batch).

        Returns:
            The completion (without the prompt) for a str, a list for a list.
        """
        single = isinstance(prompts, str)
        prompt_list = [prompts] if single else list(prompts)
        for i, p in enumerate(prompt_list):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be a string. Received: {p!r}")
        _check_positive_int("max_new_tokens", max_new_tokens)
        _check_positive_int("batch_size", batch_size)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        fn = self._generate_function(sampler, temperature, top_k, top_p, seed)
        texts = [self.format_prompt(p, chat_template) for p in prompt_list]
        ids = self._tokenize_many(texts)
        self._check_prompt_lengths(ids, max_new_tokens)
        results = [None] * len(ids)
        for batch in _completions().bucket_batches([len(x) for x in ids], batch_size):
            batch = sorted(batch.tolist())
            token_ids, mask = self._pad_prompts([ids[i] for i in batch], max_new_tokens)
            out = fn({"token_ids": tf.constant(token_ids), "padding_mask": tf.constant(mask)})
            out_ids = out["token_ids"].numpy()
            for row, i in enumerate(batch):
                start = len(ids[i])
                new = out_ids[row, start:start + max_new_tokens].tolist()
                results[i] = _cut_at_stops(self._detokenize(_before_stop_ids(
                    new, self._stop_token_ids())), stops)
                if callback is not None:
                    callback(i, results[i])
        return results[0] if single else results

    def _generate_function(self, sampler, temperature, top_k, top_p, seed):
        import keras_hub

        if sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler. Expected one of {list(SAMPLERS)}. "
                             f"Received: sampler={sampler!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                temperature > 0):
            raise ValueError(f"temperature must be a number > 0. Received: {temperature!r}")
        if sampler == "greedy":
            key = ("greedy",)
        elif sampler == "top_k":
            _check_positive_int("top_k", top_k)
            key = ("top_k", float(temperature), int(top_k), seed)
        else:
            if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not (
                    0 < top_p <= 1):
                raise ValueError(f"top_p must be in (0, 1]. Received: {top_p!r}")
            key = ("top_p", float(temperature), float(top_p), seed)
        if key not in self._generate_fns:
            if sampler == "greedy":
                sampler_obj = keras_hub.samplers.GreedySampler()
            elif sampler == "top_k":
                sampler_obj = keras_hub.samplers.TopKSampler(
                    k=int(top_k), seed=seed, temperature=float(temperature))
            else:
                sampler_obj = keras_hub.samplers.TopPSampler(
                    p=float(top_p), seed=seed, temperature=float(temperature))
            # Any batch and length: traced once per sampler, not once per shape.
            self._generate_fns[key] = tf.function(
                self._generate_step_with(sampler_obj), input_signature=[{
                    "token_ids": tf.TensorSpec((None, None), tf.int32),
                    "padding_mask": tf.TensorSpec((None, None), tf.bool)}])
        return self._generate_fns[key]

    def _generate_step_with(self, sampler_obj):
        lm = self.causal_lm
        stop_ids = tuple(self._stop_token_ids())

        def step(inputs):
            previous = getattr(lm, "sampler", None)
            object.__setattr__(lm, "sampler", sampler_obj)
            try:
                return lm.generate_step(inputs, stop_token_ids=stop_ids)
            finally:
                object.__setattr__(lm, "sampler", previous)

        return step

    def _stop_token_ids(self):
        ids = []
        end = getattr(self.tokenizer, "end_token_id", None)
        if end is not None:
            ids.append(int(end))
        if self.chat_template is not None:
            chat_end = render_chat_prompt(self.chat_template, "")[1]
            try:
                token = self.tokenizer.token_to_id(chat_end)
            except (KeyError, ValueError):
                token = None
            if token is not None and int(token) not in ids:
                ids.append(int(token))
        return ids

    def _check_prompt_lengths(self, ids, max_new_tokens):
        limit = self.max_length
        for i, x in enumerate(ids):
            if not x:
                raise ValueError(f"Prompt {i} is empty; give the model some text to continue.")
            if limit is not None and len(x) + max_new_tokens > limit:
                raise ValueError(
                    f"Prompt {i} is {len(x)} tokens; with max_new_tokens={max_new_tokens} it "
                    f"needs {len(x) + max_new_tokens}, but the model's context is {limit} "
                    "tokens. Shorten the prompt or ask for fewer new tokens."
                )

    def _pad_prompts(self, rows, max_new_tokens):
        longest = max(len(r) for r in rows)
        width = longest + max_new_tokens
        if self.max_length:
            width = min(_completions().padded_width(width, 8, self.max_length), self.max_length)
        token_ids = np.full((len(rows), width), self._pad_id(), np.int32)
        mask = np.zeros((len(rows), width), bool)
        for row, ids in enumerate(rows):
            token_ids[row, :len(ids)] = ids
            mask[row, :len(ids)] = True
        return token_ids, mask

    # -- tokenizer helpers -------------------------------------------------------------

    def _tokenize_many(self, texts):
        if not texts:
            return []
        out = self.tokenizer(tf.constant(list(texts)))
        if isinstance(out, tf.RaggedTensor):
            return [list(map(int, row)) for row in out.to_list()]
        return [np.asarray(row).reshape(-1).astype(int).tolist() for row in out]

    def _detokenize(self, ids):
        if not ids:
            return ""
        text = self.tokenizer.detokenize(tf.constant([ids], tf.int32))
        text = np.asarray(text).reshape(-1)[0]
        return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)

    def _pad_id(self):
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def _forward(self):
        if self._forward_fn is None:
            lm = self.causal_lm

            @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32),
                                          tf.TensorSpec((None, None), tf.bool)])
            def forward(token_ids, padding_mask):
                return lm({"token_ids": token_ids, "padding_mask": padding_mask},
                          training=False)

            object.__setattr__(self, "_forward_fn", forward)
        return self._forward_fn

    # -- adapters ------------------------------------------------------------------------

    def lora_layers(self) -> list[keras.layers.Layer]:
        """The backbone layers with LoRA adapters, in a fixed order."""
        return [layer for layer in _dense_layers(self.backbone)
                if getattr(layer, "lora_enabled", False)]

    def save_adapters(self, path: str) -> str:
        """Writes the LoRA adapters alone (an `.npz`, no base weights); returns the path.

        The file records the policy (rank, alpha, target) and each adapted
        layer's path; `load_adapters` puts them on a fresh copy of the base.
        Written to a temporary file and renamed, so a failure writes nothing.
        """
        policy = self.freeze_policy
        layers = self.lora_layers()
        if not isinstance(policy, LoRA) or not layers:
            raise ValueError("The task has no LoRA adapters to save; build it with "
                             "freeze='lora:R'.")
        if not path.endswith(".npz"):
            raise ValueError(f"Adapter files end in '.npz'. Received: path={path!r}")
        meta = {"format": ADAPTER_FORMAT, "policy": policy.to_dict(),
                "layers": [layer.path for layer in layers]}
        arrays = {"meta": np.array(json.dumps(meta))}
        for i, layer in enumerate(layers):
            arrays[f"{i}_a"] = keras.ops.convert_to_numpy(layer.lora_kernel_a)
            arrays[f"{i}_b"] = keras.ops.convert_to_numpy(layer.lora_kernel_b)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=directory, prefix=".adapters-")
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    def load_adapters(self, path: str) -> FreezePolicy:
        """Loads adapters `save_adapters` wrote onto this task's (base) backbone."""
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise ValueError(f"{path!r} is not a tfft adapter file (no 'meta' entry).")
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != ADAPTER_FORMAT:
                raise ValueError(f"{path!r} is not a tfft adapter file. Received format="
                                 f"{meta.get('format')!r}")
            arrays = {k: data[k] for k in data.files if k != "meta"}
        policy = FreezePolicy.from_dict(meta["policy"])
        if not self.lora_layers():
            self.freeze(policy)
        layers = self.lora_layers()
        paths = [layer.path for layer in layers]
        if paths != meta["layers"]:
            raise ValueError(
                f"The adapters in {path!r} are for {len(meta['layers'])} layers "
                f"({meta['layers'][:2]} ...), this model has LoRA on {len(paths)} "
                f"({paths[:2]} ...); they come from a different model."
            )
        for i, layer in enumerate(layers):
            for name, variable in (("a", layer.lora_kernel_a), ("b", layer.lora_kernel_b)):
                value = arrays[f"{i}_{name}"]
                if tuple(value.shape) != tuple(variable.shape):
                    raise ValueError(f"Adapter {i}_{name} has shape {value.shape}; the layer "
                                     f"{layer.path!r} needs {tuple(variable.shape)}.")
                variable.assign(value)
        return policy

    def merge(self) -> CausalLMTask:
        """A copy with the adapters merged into plain kernels (kernel + A @ B * alpha / rank).

        Same outputs (float rounding aside), no adapter ops: for export. A
        task without LoRA is returned as it is.
        """
        layers = self.lora_layers()
        if not layers:
            return self
        lm = self.causal_lm
        merged = {id(dense_kernel_variable(layer)): keras.ops.convert_to_numpy(layer.kernel)
                  for layer in layers}
        lora_ids = {id(v) for layer in layers for v in (layer.lora_kernel_a,
                                                       layer.lora_kernel_b)}
        backbone = type(self.backbone).from_config(_backbone_config(self.backbone))
        source = [w for w in self.backbone.weights if id(w) not in lora_ids]
        if len(source) != len(backbone.weights):
            raise ValueError(f"merge could not match weights: {len(source)} base weights, "
                             f"{len(backbone.weights)} in the plain copy.")
        for src, dst in zip(source, backbone.weights, strict=True):
            value = merged.get(id(src))
            dst.assign(keras.ops.convert_to_numpy(src) if value is None else value)
        plain = type(lm)(backbone=backbone, preprocessor=lm.preprocessor)
        return CausalLMTask(plain, chat_template=self.chat_template,
                            sequence_length=self.sequence_length,
                            context_length=self.context_length,
                            gradient_checkpointing=self.gradient_checkpointing,
                            name=f"{self.name}_merged")

    # -- serialisation -------------------------------------------------------------------

    def get_config(self) -> dict:
        policy = self.freeze_policy
        causal_lm = keras.saving.serialize_keras_object(self.causal_lm)
        # The task trains, not the inner model: its compile state is not restored.
        causal_lm.pop("compile_config", None)
        inner = causal_lm.get("config", {}).get("backbone")
        if isinstance(inner, dict) and isinstance(inner.get("config"), dict):
            inner["config"] = {**inner["config"], **_backbone_config(self.backbone)}
        preprocessor = causal_lm.get("config", {}).get("preprocessor")
        if isinstance(preprocessor, dict) and isinstance(preprocessor.get("config"), dict) and (
                isinstance(preprocessor["config"].get("tokenizer"), dict)):
            preprocessor["config"]["tokenizer"] = tokenizer_config_with_special_tokens(
                self.tokenizer, preprocessor["config"]["tokenizer"])
        return {
            "name": self.name,
            "causal_lm": causal_lm,
            "freeze_policy": None if policy is None else policy.to_dict(),
            "chat_template": self.chat_template,
            "sequence_length": self.sequence_length,
            "context_length": self.context_length,
            "gradient_checkpointing": self.gradient_checkpointing,
        }

    @classmethod
    def from_config(cls, config: dict) -> CausalLMTask:
        register_tokenizer_classes()
        config = dict(config)
        config["causal_lm"] = keras.saving.deserialize_keras_object(config["causal_lm"])
        task = cls(**config)
        if isinstance(task.freeze_policy, LoRA):
            # KerasHub backbones rebuild their layers without adapters: put them back,
            # so that `lora_state` has somewhere to load the saved base kernels and
            # adapters into (unmerged: training goes on, `save_adapters` still works).
            task.freeze(task.freeze_policy)
        return task


def causal_lm_policy(freeze: FreezePolicy | str, lora_mlp: bool = False) -> FreezePolicy:
    """Parses a causal-LM adaptation: LoRA (attention, `lora_mlp`: MLP too) or full."""
    policy = parse_freeze(freeze)
    if isinstance(policy, LoRA):
        if policy.target is None:
            target = f"{ATTENTION_TARGET}|{MLP_TARGET}" if lora_mlp else ATTENTION_TARGET
            policy = LoRA(rank=policy.rank, alpha=policy.alpha, target=target)
        return policy
    if isinstance(policy, Full):
        return policy
    raise ValueError(
        f"task='causal_lm' trains with one of {list(CAUSAL_LM_FREEZE_FORMS)}. "
        f"Received: freeze={freeze!r}"
    )


def _transformer_blocks(backbone):
    blocks = getattr(backbone, "transformer_layers", None)
    if not blocks:
        raise ValueError(
            f"gradient_checkpointing=True needs a backbone with `transformer_layers` (KerasHub "
            f"Llama, GPT-2, Gemma, Mistral ...); {type(backbone).__name__} has none."
        )
    return list(blocks)


def _dense_layers(model):
    seen, out = set(), []
    for layer in walk_layers(model):
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) and (
                id(layer) not in seen):
            seen.add(id(layer))
            out.append(layer)
    return out


def _apply_lora(backbone, policy):
    regex = re.compile(policy.target)
    targets = [layer for layer in _dense_layers(backbone) if regex.search(layer.path)]
    if not targets:
        raise ValueError(
            f"No Dense or EinsumDense layer of {backbone.name!r} matches the LoRA target "
            f"{policy.target!r}. Layer paths look like "
            f"{[layer.path for layer in _dense_layers(backbone)[:4]]}."
        )
    for layer in targets:
        if layer.lora_enabled and layer.lora_rank != policy.rank:
            raise ValueError(
                f"The layer {layer.path!r} already has LoRA of rank {layer.lora_rank}; it "
                f"cannot change to rank {policy.rank}. Merge first (task.merge())."
            )
    backbone.trainable = True
    for layer in targets:
        if not layer.lora_enabled:
            layer.enable_lora(policy.rank, lora_alpha=policy.alpha)
        elif not np.any(layer.lora_kernel_a.numpy()) and not np.any(
                layer.lora_kernel_b.numpy()):
            # A reloaded layer has zero adapters, where no gradient flows.
            layer.lora_kernel_a.assign(keras.initializers.HeUniform()(layer.lora_kernel_a.shape))
    adapters = {id(v) for layer in targets for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    for variable in backbone.variables:
        variable.trainable = id(variable) in adapters
    logger.info("LoRA rank %d on %d layers of %s: %d trainable parameters.", policy.rank,
                len(targets), backbone.name, sum(int(np.prod(v.shape)) for v in
                                                 backbone.trainable_variables))


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")


def _is_token_dataset(x):
    return isinstance(x, tf.data.Dataset) and isinstance(x.element_spec, tuple) and isinstance(
        x.element_spec[0], Mapping) and "token_ids" in x.element_spec[0]


def _before_stop_ids(ids, stop_ids):
    for n, token in enumerate(ids):
        if token in stop_ids:
            return ids[:n]
    return ids


def _cut_at_stops(text, stops):
    cut = len(text)
    for s in stops:
        if s:
            index = text.find(s)
            if index != -1:
                cut = min(cut, index)
    return text[:cut]


def build_causal_lm(backbone: str | keras.Model, freeze: FreezePolicy | str = "lora:8",
                    sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
                    chat_template: bool = False, lora_mlp: bool = False,
                    learning_rate: float | None = None, compile: bool = True,
                    context_length: int | None = None, gradient_checkpointing: bool = False,
                    **load_kwargs: Any) -> CausalLMTask:
    """Builds a `CausalLMTask` from a causal LM spec or a KerasHub `CausalLM`.

    Args:
        backbone: str or `keras_hub.models.CausalLM`. `'offline:smollm2'`, a
            KerasHub causal LM preset, or a local preset / HF folder.
        freeze: str or FreezePolicy. `"lora:R"` (adapters on the attention
            projections; `tfft.LoRA(rank, alpha, target)` for your own
            layer regex) or `"full"`. Defaults to `"lora:8"`.
        sequence_length: int. Longest training input. Defaults to 256.
        chat_template: bool. Format prompts with the chat template the model
            ships (its `tokenizer_config.json`). Defaults to False.
        lora_mlp: bool. LoRA on the MLP projections too. Defaults to False.
        learning_rate: float. For the default AdamW. Defaults to 2e-4 (LoRA)
            or 2e-5 (full).
        compile: bool. Compile for training. Defaults to True.
        context_length: int. Longest prompt + generation; defaults to the
            folder's `max_position_embeddings` (SmolLM2: 8192) or the
            backbone's `max_sequence_length`.
        gradient_checkpointing: bool. Recompute each block's activations in
            the backward pass (less memory, more time). Defaults to False.
        **load_kwargs: passed to `load_causal_lm` (e.g. `dtype`).
    """
    policy = causal_lm_policy(freeze, lora_mlp=lora_mlp)
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or (
            sequence_length < 2):
        raise ValueError(f"sequence_length must be an int >= 2. Received: {sequence_length!r}")
    template = None
    if isinstance(backbone, str):
        lm = load_causal_lm(backbone, sequence_length=sequence_length, **load_kwargs)
        folder = preset_directory(backbone)
        if chat_template:
            template = read_chat_template(folder)
        if context_length is None:
            context_length = read_context_length(folder)
    else:
        lm = backbone if isinstance(backbone, keras.Model) else getattr(backbone, "model",
                                                                        backbone)
        if chat_template:
            template = getattr(backbone, "tfft_chat_template", None)
    if not _is_causal_lm(lm):
        raise ValueError(
            "task='causal_lm' needs a causal (GPT-style) language model: "
            f"{CAUSAL_LM_SPEC_FORMS}. Received: {type(lm).__name__}, not a causal LM "
            "(for an encoder backbone use task='multiclass', 'binary', ...)."
        )
    if chat_template and template is None:
        raise ValueError(
            f"chat_template=True but {backbone if isinstance(backbone, str) else 'the model'!r} "
            "ships no chat template (no 'chat_template' in its tokenizer_config.json). "
            "Pass chat_template=False."
        )
    if template is not None:
        render_chat_prompt(template, "")  # refuse unsupported templates now
    name = re.sub(r"[^A-Za-z0-9_]+", "_", backbone if isinstance(backbone, str) else lm.name)
    task = CausalLMTask(lm, chat_template=template, sequence_length=sequence_length,
                        context_length=context_length,
                        gradient_checkpointing=gradient_checkpointing,
                        name=f"{name.strip('_')}_causal_lm")
    task.freeze(policy)
    logger.info("%s: %d trainable of %d parameters.", task.name,
                task.trainable_parameter_count(), task.parameter_count())
    if compile:
        task.compile(learning_rate=learning_rate)
    return task
