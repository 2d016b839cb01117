"""Zero-shot text classification with a sentence encoder (embedding similarity)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfft.backbones import Backbone, load_backbone
from tfft.models import build_model
from tfft.prompting.templates import (
    LabelTemplate,
    TemplateLike,
    VerbalizerLike,
    as_templates,
    as_verbalizer,
)


def softmax(scores, temperature=1.0):
    """Row-wise softmax of `scores / temperature` in float64."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0. Received: temperature={temperature!r}")
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _as_texts(texts):
    if isinstance(texts, str):
        raise TypeError(
            "Pass a list of texts, not a single string. Received: a str; wrap it as [text]."
        )
    return [str(t) for t in texts]


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from a text `Backbone`.

    Args:
        backbone: `tfft.Backbone` or spec (e.g. `"minilm"`). Its model maps the
            preprocessor's token dict to a dict with `"sequence_output"`.
        sequence_length: int. Tokens per text when `backbone` is a spec.
            Defaults to 128.
        batch_size: int. Texts per forward pass. Defaults to 32.
    """

    def __init__(
        self, backbone: Backbone | str = "minilm", sequence_length: int = 128,
        batch_size: int = 32,
    ) -> None:
        if isinstance(backbone, str):
            backbone = load_backbone(backbone, sequence_length=sequence_length)
        if backbone.preprocessor is None:
            raise ValueError(
                "A sentence encoder needs a backbone with a text preprocessor. "
                f"Received: {backbone!r}"
            )
        self.backbone = backbone
        self.batch_size = int(batch_size)
        output_key = backbone.info.output_key or "sequence_output"
        mask_key = backbone.info.mask_key or "padding_mask"
        model = backbone.model

        @tf.function(reduce_retracing=True)
        def _embed(inputs):
            out = model(inputs, training=False)
            seq = out[output_key] if isinstance(out, dict) else out
            mask = tf.cast(inputs[mask_key], seq.dtype)[..., None]
            pooled = tf.reduce_sum(seq * mask, axis=1) / tf.maximum(
                tf.reduce_sum(mask, axis=1), 1.0
            )
            return tf.math.l2_normalize(pooled, axis=-1)

        self._embed = _embed

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Returns `(len(texts), dim)` float32 unit vectors."""
        texts = _as_texts(texts)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = tf.constant(texts[start:start + self.batch_size])
            chunks.append(self._embed(self.backbone.preprocessor(batch)).numpy())
        if not chunks:
            return np.zeros((0, self.backbone.info.feature_dim), np.float32)
        return np.concatenate(chunks).astype(np.float32)


class ZeroShotEncoderClassifier:
    """Zero-shot classifier: the class whose label prompt embeds closest to the text.

    Each input and each label prompt (`template` filled with each of a class's
    label words) is embedded with the same sentence encoder; a class's
    embedding is the normalised mean of its prompts' embeddings, and the score
    is cosine similarity (averaged over templates when several are given).

    Args:
        backbone: str or `tfft.Backbone`. Defaults to `"minilm"` (the offline
            all-MiniLM-L6-v2).
        template: str, `LabelTemplate`, list or `TemplateEnsemble`. Defaults to
            `"This article is about {label}."`.
        verbalizer: `Verbalizer`, dict `{class: [words]}` or list of class
            names (each its own label word).
        class_names: list of str. Class order of the outputs; defaults to the
            verbalizer's order.
        temperature: float. Softmax temperature over cosine similarities.
            Defaults to 0.05.
        sequence_length: int. Tokens per text when `backbone` is a spec.
            Defaults to 128.
        batch_size: int. Defaults to 32.

    Example:

    >>> clf = ZeroShotEncoderClassifier(
    ...     "minilm", verbalizer={"sport": ["sport"], "politics": ["politics"]})
    >>> clf.predict(["The striker scored twice in the cup final."])
    ['sport']
    """

    def __init__(
        self,
        backbone: Backbone | SentenceEmbedder | str = "minilm",
        template: TemplateLike = "This article is about {label}.",
        verbalizer: VerbalizerLike | None = None,
        class_names: Sequence[str] | None = None,
        temperature: float = 0.05,
        sequence_length: int = 128,
        batch_size: int = 32,
    ) -> None:
        self.verbalizer = as_verbalizer(verbalizer, class_names)
        self.class_names = self.verbalizer.class_names
        self.templates = as_templates(template, LabelTemplate)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature!r}")
        self.temperature = float(temperature)
        self.embedder = (
            backbone if isinstance(backbone, SentenceEmbedder)
            else SentenceEmbedder(backbone, sequence_length, batch_size)
        )
        tokenizer = getattr(self.embedder.backbone.preprocessor, "tokenizer", None)
        if tokenizer is not None:
            self.verbalizer.check_tokens(lambda w: np.asarray(tokenizer(w)).reshape(-1))
        self._class_embeddings = None

    def class_embeddings(self) -> np.ndarray:
        """Returns `(num_templates, num_classes, dim)` unit vectors (computed once)."""
        if self._class_embeddings is None:
            per_template = []
            for template in self.templates:
                rows = []
                for name in self.class_names:
                    prompts = [template.format(w) for w in self.verbalizer.words(name)]
                    mean = self.embedder(prompts).mean(axis=0)
                    rows.append(mean / max(np.linalg.norm(mean), 1e-12))
                per_template.append(np.stack(rows))
            self._class_embeddings = np.stack(per_template).astype(np.float32)
        return self._class_embeddings

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each text to each class, `(n, num_classes)`."""
        embeddings = self.embedder(texts)
        return np.einsum("nd,tcd->nc", embeddings, self.class_embeddings()) / len(self.templates)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return softmax(self.scores(texts), self.temperature)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """Returns the predicted class names."""
        return [self.class_names[i] for i in self.scores(texts).argmax(axis=-1)]


def build_zero_shot_model(
    backbone: Backbone | str,
    class_names: Sequence[str],
    template: TemplateLike = "This article is about {label}.",
    verbalizer: VerbalizerLike | None = None,
    temperature: float = 0.05,
) -> keras.Model:
    """A zero-shot classifier as an ordinary tfft model: prompts, no parameter updates.

    The head's weights are the label prompts' embeddings: pooled features are
    L2-normalised and the head scores their cosine similarity to each class's
    prompt embedding, divided by `temperature`, then softmax. Predictions
    equal `ZeroShotEncoderClassifier.predict_proba`; the model evaluates,
    exports (raw strings in) and can be fine-tuned further like any other.

    Args:
        backbone: `tfft.Backbone` or spec with a text preprocessor.
        class_names: list of str. Output classes, in order.
        template: str or list. Label prompt template(s) with `{label}`.
        verbalizer: dict `{class: [words]}`. Defaults to each class name.
        temperature: float. Softmax temperature. Defaults to 0.05.

    Returns:
        An uncompiled `keras.Model` with a frozen backbone.
    """
    if isinstance(backbone, str):
        backbone = load_backbone(backbone)
    verbalizer = verbalizer or {name: [name.replace("_", " ")] for name in class_names}
    classifier = ZeroShotEncoderClassifier(
        backbone, template=template, verbalizer=verbalizer, class_names=list(class_names),
        temperature=temperature,
    )
    kernel = classifier.class_embeddings().mean(axis=0).T / classifier.temperature
    model = build_model(backbone, task="multiclass", num_classes=len(class_names),
                        freeze="feature_extraction", pooling="mean", dropout=0.0,
                        normalize_features=True, compile=False)
    output = model.get_layer("head").output_layer
    output.kernel.assign(kernel.astype("float32"))
    output.bias.assign(np.zeros(len(class_names), "float32"))
    return model
