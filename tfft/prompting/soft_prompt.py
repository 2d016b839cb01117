"""Soft prompt tuning: learnable prompt vectors in front of a frozen transformer.

Only the prompt vectors (and a classification head, when there is one) train;
every backbone weight stays frozen (Lester et al., 2021, "The Power of Scale
for Parameter-Efficient Prompt Tuning"). Supported KerasHub families:

- BERT-like encoders (`BertBackbone`, the offline MiniLM): prompts are
  prepended to the summed token + position + segment embeddings, before the
  embedding LayerNorm; the padding mask is extended to cover them.
- Llama-like decoders (`LlamaBackbone`, `Llama3Backbone`, SmolLM2, Mistral):
  prompts are prepended to the token embeddings; rotary positions follow.

The models are functional Keras models built from the backbone's own layers,
so they save to `.keras`, reload and export with `tf.saved_model.save`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from tfft.backbones import Backbone
from tfft.utils.checks import check_int

# A Keras shape: `(batch, ...)` with None for unknown sizes.
Shape = tuple[int | None, ...]

_PACKAGE = "tfft"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftPrompt(keras.layers.Layer):
    """Prepends `num_tokens` learnable vectors to a sequence of embeddings.

    Args:
        num_tokens: int. Number of prompt vectors.
        initializer: str or keras initializer. Defaults to
            `RandomUniform(-0.5, 0.5)`; `build_soft_prompt_*` overwrite it with
            sampled vocabulary embeddings by default.

    Call arguments:
        embeddings: `(batch, seq, dim)`. Returns `(batch, num_tokens + seq, dim)`.
    """

    def __init__(self, num_tokens: int, initializer: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_tokens = check_int("num_tokens", num_tokens)
        self.initializer = keras.initializers.get(
            initializer or keras.initializers.RandomUniform(-0.5, 0.5)
        )

    def build(self, input_shape: Shape) -> None:
        self.prompt = self.add_weight(
            shape=(self.num_tokens, input_shape[-1]), initializer=self.initializer,
            trainable=True, name="prompt",
        )

    def call(self, embeddings: Any) -> Any:
        batch = ops.shape(embeddings)[0]
        prompt = ops.cast(self.prompt, embeddings.dtype)
        prompt = ops.broadcast_to(
            ops.expand_dims(prompt, 0), (batch, self.num_tokens, ops.shape(prompt)[-1])
        )
        return ops.concatenate([prompt, embeddings], axis=1)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        seq = None if input_shape[1] is None else input_shape[1] + self.num_tokens
        return (input_shape[0], seq, input_shape[2])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "num_tokens": self.num_tokens,
            "initializer": keras.initializers.serialize(self.initializer),
        })
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PromptPaddingMask(keras.layers.Layer):
    """Extends a `(batch, seq)` padding mask with `num_tokens` leading ones."""

    def __init__(self, num_tokens: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)

    def call(self, padding_mask: Any) -> Any:
        ones = ops.ones((ops.shape(padding_mask)[0], self.num_tokens), padding_mask.dtype)
        return ops.concatenate([ones, padding_mask], axis=1)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        seq = None if input_shape[1] is None else input_shape[1] + self.num_tokens
        return (input_shape[0], seq)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_tokens": self.num_tokens})
        return config


POOLING_MODES = ("mean", "first", "prompt_mean")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftPromptPooling(keras.layers.Layer):
    """Pools a prompt-prefixed sequence to one vector.

    Args:
        num_tokens: int. Number of leading prompt positions.
        mode: str. `"mean"`: masked mean over the real tokens; `"first"`: the
            first real token (BERT's [CLS]); `"prompt_mean"`: mean over the
            prompt positions. Defaults to `"mean"`.

    Call arguments:
        inputs: `[sequence (batch, num_tokens + seq, dim), padding_mask (batch, seq)]`.
    """

    def __init__(self, num_tokens: int, mode: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(
                f"Unknown pooling. Expected one of {list(POOLING_MODES)}. Received: mode={mode!r}"
            )
        self.num_tokens = int(num_tokens)
        self.mode = mode

    def call(self, inputs: Sequence[Any]) -> Any:
        sequence, padding_mask = inputs
        if self.mode == "first":
            return sequence[:, self.num_tokens, :]
        if self.mode == "prompt_mean":
            return ops.mean(sequence[:, : self.num_tokens, :], axis=1)
        real = sequence[:, self.num_tokens:, :]
        mask = ops.expand_dims(ops.cast(padding_mask, real.dtype), -1)
        return ops.sum(real * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        return (input_shape[0][0], input_shape[0][-1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_tokens": self.num_tokens, "mode": self.mode})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StripPrompt(keras.layers.Layer):
    """Drops the leading `num_tokens` positions of a sequence."""

    def __init__(self, num_tokens: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)

    def call(self, sequence: Any) -> Any:
        return sequence[:, self.num_tokens:]

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        seq = None if input_shape[1] is None else input_shape[1] - self.num_tokens
        return (input_shape[0], seq, *input_shape[2:])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_tokens": self.num_tokens})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftPromptModel(keras.Model):
    """A functional model whose backbone layers stay frozen after a `.keras` reload.

    Keras restores `trainable=False` on a reloaded layer but not on the
    variables of sublayers it builds during deserialisation (a KerasHub
    `TransformerEncoder`'s dense layers, say), so the frozen layer names are
    part of the config and re-frozen on load.

    Args:
        frozen_layers: list of str. Names of the layers to keep frozen.
    """

    def __init__(self, *args: Any, frozen_layers: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frozen_layers = list(frozen_layers)
        for name in self.frozen_layers:
            layer = self.get_layer(name)
            layer.trainable = False
            # Sublayers built during deserialisation are not always in the
            # layer's tracked sublayers, so freeze the variables themselves.
            for variable in layer.weights:
                variable.trainable = False

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["frozen_layers"] = list(self.frozen_layers)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftPromptDecoder(keras.Model):
    """A frozen Llama-family decoder behind a trainable soft prompt.

    A subclassed model holding the whole backbone (KerasHub's
    `LlamaTransformerDecoder.get_config` is broken in keras-hub 0.32, so its
    layers cannot be serialised one by one; the backbone's own config is fine).

    Args:
        backbone: a KerasHub `LlamaBackbone`/`Llama3Backbone` (or config dict).
        num_tokens: int. Prompt vectors.
        num_classes: int or None. None: return next-token logits for the real
            positions, `(batch, seq, vocab)`; else `(batch, num_classes)` logits
            from a dense head over the pooled sequence.
        pooling: str. Pooling for the classifier: `"mean"`, `"first"`,
            `"prompt_mean"`. Defaults to `"mean"`.
    """

    def __init__(
        self,
        backbone: keras.Model | dict[str, Any],
        num_tokens: int,
        num_classes: int | None = None,
        pooling: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        self.backbone = backbone
        self.num_tokens = int(num_tokens)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.pooling = pooling
        self.soft_prompt = SoftPrompt(self.num_tokens, name="soft_prompt")
        self.prompt_padding_mask = PromptPaddingMask(self.num_tokens, name="prompt_padding_mask")
        if self.num_classes is None:
            self.strip_prompt = StripPrompt(self.num_tokens, name="strip_prompt")
        else:
            self.pool = SoftPromptPooling(self.num_tokens, pooling, name="soft_prompt_pooling")
            self.head = keras.layers.Dense(self.num_classes, name="head", dtype="float32")
        self.backbone.trainable = False
        self.call({"token_ids": ops.zeros((1, 1), "int32"),
                   "padding_mask": ops.ones((1, 1), "int32")})
        for variable in self.backbone.weights:
            variable.trainable = False

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        backbone = self.backbone
        x = self.soft_prompt(backbone.token_embedding(inputs["token_ids"]))
        mask = self.prompt_padding_mask(inputs["padding_mask"])
        for layer in backbone.transformer_layers:
            x = layer(x, decoder_padding_mask=mask, training=training)
        x = backbone.layer_norm(x)
        if self.num_classes is None:
            return backbone.token_embedding(self.strip_prompt(x), reverse=True)
        return self.head(self.pool([x, inputs["padding_mask"]]))

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_tokens": self.num_tokens,
            "num_classes": self.num_classes,
            "pooling": self.pooling,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SoftPromptDecoder:
        return cls(**config)


def _frozen_names(model, inputs, outputs):
    used = {layer.name for layer in keras.Model(inputs, outputs).layers}
    return [layer.name for layer in model.layers if layer.name in used
            and not isinstance(layer, keras.layers.InputLayer)]


def _family(model):
    names = ("token_embedding", "transformer_layers")
    if not all(hasattr(model, n) for n in names):
        return None
    bert = ("position_embedding", "segment_embedding", "embeddings_add", "embeddings_layer_norm")
    if all(hasattr(model, n) for n in bert):
        return "bert"
    if hasattr(model, "layer_norm") and not hasattr(model, "position_embedding"):
        return "llama"
    return None


def _backbone_model(backbone):
    model = getattr(backbone, "model", backbone)  # tfft.Backbone or a KerasHub backbone
    model = getattr(model, "backbone", model) if _family(model) is None else model
    family = _family(model)
    if family is None:
        raise TypeError(
            "Soft prompts support KerasHub BERT-family encoders (BertBackbone, the "
            "offline MiniLM) and Llama-family decoders (LlamaBackbone, Llama3Backbone, "
            f"SmolLM2). Received: {type(model).__name__}"
        )
    return model, family


def count_trainable_params(model: keras.Model) -> int:
    """Number of trainable scalars in `model`."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _report(model, label):
    trainable = count_trainable_params(model)
    # Summed over the weights: a subclassed model that is never `build()`-called
    # (SoftPromptDecoder) has no count_params().
    total = int(sum(np.prod(w.shape) for w in model.weights))
    print(
        f"{label}: {trainable:,} trainable of {total:,} parameters "
        f"({100.0 * trainable / max(total, 1):.3f}%)"
    )
    return trainable


def _init_from_vocabulary(soft_prompt, token_embedding, seed):
    """Initialises prompts from randomly chosen token embeddings (Lester et al.)."""
    table = np.asarray(ops.convert_to_numpy(token_embedding.embeddings))
    rng = np.random.default_rng(seed)
    n = soft_prompt.num_tokens
    rows = rng.choice(table.shape[0], n, replace=table.shape[0] < n)
    soft_prompt.prompt.assign(table[rows].astype(soft_prompt.prompt.dtype))


def _prompted_sequence(model, num_tokens, soft_prompt, inputs):
    """Runs a frozen BERT-family backbone with prompts; returns (sequence, mask)."""
    padding_mask = inputs["padding_mask"]
    mask = PromptPaddingMask(num_tokens, name="prompt_padding_mask")(padding_mask)
    tokens = model.token_embedding(inputs["token_ids"])
    positions = model.position_embedding(tokens)
    segments = model.segment_embedding(inputs["segment_ids"])
    x = model.embeddings_add((tokens, positions, segments))
    x = soft_prompt(x)
    x = model.embeddings_layer_norm(x)
    x = model.embeddings_dropout(x)
    for layer in model.transformer_layers:
        x = layer(x, padding_mask=mask)
    return x, mask


def _inputs(family):
    names = ["token_ids", "segment_ids", "padding_mask"] if family == "bert" else [
        "token_ids", "padding_mask"]
    return {n: keras.Input(shape=(None,), dtype="int32", name=n) for n in names}


def build_soft_prompt_classifier(
    backbone: Backbone | keras.Model,
    num_classes: int,
    num_tokens: int = 20,
    pooling: str = "mean",
    init: str = "vocab",
    seed: int = 0,
    dropout: float = 0.0,
    verbose: bool = True,
) -> keras.Model:
    """A frozen transformer with a trainable soft prompt and classification head.

    Args:
        backbone: `tfft.Backbone`, or a KerasHub `BertBackbone` / `Llama3Backbone`
            (or a task model holding one). Its layers are frozen in place.
        num_classes: int. Output logits per example.
        num_tokens: int. Prompt vectors. Defaults to 20.
        pooling: str. `"mean"` (masked mean of real tokens), `"first"` or
            `"prompt_mean"`. Defaults to `"mean"`.
        init: str. `"vocab"` (sampled token embeddings) or `"random"`.
            Defaults to `"vocab"`.
        seed: int. Seed for the vocabulary sample. Defaults to 0.
        dropout: float. Dropout before the head. Defaults to 0.
        verbose: bool. Print the trainable parameter count. Defaults to True.

    Returns:
        A `keras.Model` mapping the backbone's input dict to `(batch, num_classes)`
        logits; compile it with `from_logits=True`. `count_trainable_params(model)`
        gives the prompt + head parameter count.

    Example:

    >>> backbone = tfft.load_backbone("minilm", sequence_length=64)
    >>> model = build_soft_prompt_classifier(backbone, num_classes=5, num_tokens=20)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> model.fit(backbone.preprocess(texts), labels, epochs=2)
    """
    check_int("num_classes", num_classes, minimum=2)
    if init not in ("vocab", "random"):
        raise ValueError(f"Unknown init. Expected 'vocab' or 'random'. Received: init={init!r}")
    model, family = _backbone_model(backbone)
    if family == "llama":
        if dropout:
            raise ValueError("dropout before the head is not supported for decoder backbones.")
        classifier = SoftPromptDecoder(model, num_tokens, num_classes, pooling,
                                       name="soft_prompt_classifier")
        if init == "vocab":
            _init_from_vocabulary(classifier.soft_prompt, model.token_embedding, seed)
        if verbose:
            _report(classifier, "Soft prompt classifier")
        return classifier
    model.trainable = False
    soft_prompt = SoftPrompt(num_tokens, name="soft_prompt")
    inputs = _inputs(family)
    sequence, _ = _prompted_sequence(model, num_tokens, soft_prompt, inputs)
    pooled = SoftPromptPooling(num_tokens, pooling, name="soft_prompt_pooling")(
        [sequence, inputs["padding_mask"]]
    )
    if dropout:
        pooled = keras.layers.Dropout(dropout, name="head_dropout")(pooled)
    logits = keras.layers.Dense(num_classes, name="head", dtype="float32")(pooled)
    classifier = SoftPromptModel(
        inputs, logits, frozen_layers=_frozen_names(model, inputs, logits),
        name="soft_prompt_classifier",
    )
    if init == "vocab":
        _init_from_vocabulary(soft_prompt, model.token_embedding, seed)
    if verbose:
        _report(classifier, "Soft prompt classifier")
    return classifier


def build_soft_prompt_causal_lm(
    backbone: Backbone | keras.Model,
    num_tokens: int = 20,
    init: str = "vocab",
    seed: int = 0,
    verbose: bool = True,
) -> keras.Model:
    """A frozen Llama-family decoder with a trainable soft prompt, returning LM logits.

    The model maps `{"token_ids", "padding_mask"}` to `(batch, seq, vocab)` logits
    for the real positions (the prompt positions are dropped), so it trains on a
    KerasHub `CausalLMPreprocessor`'s `(x, y, sample_weight)` with
    `SparseCategoricalCrossentropy(from_logits=True)`, and scores label words
    with `CausalLMClassifier(model, ..., tokenizer=tokenizer)`.

    Args:
        backbone: `keras_hub.models.Llama3Backbone` (or `LlamaBackbone`,
            a `CausalLM` holding one). Its layers are frozen in place.
        num_tokens: int. Prompt vectors. Defaults to 20.
        init: str. `"vocab"` or `"random"`. Defaults to `"vocab"`.
        seed: int. Defaults to 0.
        verbose: bool. Print the trainable parameter count. Defaults to True.
    """
    if init not in ("vocab", "random"):
        raise ValueError(f"Unknown init. Expected 'vocab' or 'random'. Received: init={init!r}")
    model, family = _backbone_model(backbone)
    if family != "llama":
        raise TypeError(
            "build_soft_prompt_causal_lm needs a Llama-family decoder backbone. "
            f"Received: {type(model).__name__} (use build_soft_prompt_classifier for encoders)"
        )
    lm = SoftPromptDecoder(model, num_tokens, name="soft_prompt_causal_lm")
    if init == "vocab":
        _init_from_vocabulary(lm.soft_prompt, model.token_embedding, seed)
    if verbose:
        _report(lm, "Soft prompt causal LM")
    return lm
