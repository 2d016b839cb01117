"""Zero-shot image classification with a KerasHub CLIP model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tfft.prompting.encoder import softmax
from tfft.prompting.templates import (
    LabelTemplate,
    TemplateLike,
    VerbalizerLike,
    as_templates,
    as_verbalizer,
)


class ZeroShotImageClassifier:
    """Classifies images by the class prompt whose CLIP text embedding is closest.

    A class's embedding is the normalised mean of its prompts' text embeddings
    (several prompts, or one template filled with several label words, form a
    prompt ensemble); an image's class scores are cosine similarities scaled by
    CLIP's learnt `logit_scale`, and `predict_proba` is their softmax.

    Args:
        clip_backbone: `keras_hub.models.CLIPBackbone`.
        preprocessor: `keras_hub.models.CLIPPreprocessor`, or None. Supplies the
            tokenizer, its sequence length and the image converter.
        class_prompts: dict `{class: prompt or [prompts]}` of full sentences.
            Give this, or `verbalizer` (+ `template`).
        template: str, `LabelTemplate` or list. Filled with each label word when
            `verbalizer` is given. Defaults to `"a photo of a {label}."`.
        verbalizer: `Verbalizer`, dict or list of class names.
        tokenizer: `keras_hub.models.CLIPTokenizer`, when no preprocessor.
        sequence_length: int. Prompt length in tokens when no preprocessor.
            Defaults to the text encoder's `max_sequence_length`.
        temperature: float. Overrides the learnt logit scale: logits are
            `cosine / temperature`. Defaults to None (use `logit_scale`).

    Example:

    >>> clf = ZeroShotImageClassifier(
    ...     keras_hub.models.CLIPBackbone.from_preset("clip_vit_base_patch32"),
    ...     keras_hub.models.CLIPPreprocessor.from_preset("clip_vit_base_patch32"),
    ...     verbalizer=["cat", "dog"])
    >>> clf.predict(images)
    """

    def __init__(
        self,
        clip_backbone: keras.Model,
        preprocessor: Any = None,
        class_prompts: Mapping[str, str | Sequence[str]] | None = None,
        template: TemplateLike = "a photo of a {label}.",
        verbalizer: VerbalizerLike | None = None,
        tokenizer: Any = None,
        sequence_length: int | None = None,
        temperature: float | None = None,
    ) -> None:
        import keras_hub

        if not isinstance(clip_backbone, keras_hub.models.CLIPBackbone):
            raise TypeError(
                "clip_backbone must be a keras_hub.models.CLIPBackbone. "
                f"Received: {type(clip_backbone).__name__}"
            )
        self.backbone = clip_backbone
        self.preprocessor = preprocessor
        self.tokenizer = tokenizer or getattr(preprocessor, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError("Pass a CLIPPreprocessor or a CLIPTokenizer (tokenizer=...).")
        self.image_converter = getattr(preprocessor, "image_converter", None)
        self.sequence_length = int(
            sequence_length
            or getattr(preprocessor, "sequence_length", None)
            or clip_backbone.text_encoder.max_sequence_length
        )
        if class_prompts is not None and verbalizer is not None:
            raise ValueError("Pass class_prompts or verbalizer (+ template), not both.")
        if class_prompts is not None:
            if not isinstance(class_prompts, dict) or not class_prompts:
                raise TypeError(
                    "class_prompts must be a non-empty dict {class: prompt or [prompts]}. "
                    f"Received: {type(class_prompts).__name__}"
                )
            self.class_prompts = {
                str(c): [p] if isinstance(p, str) else list(p) for c, p in class_prompts.items()
            }
        else:
            verbalizer = as_verbalizer(verbalizer)
            templates = as_templates(template, LabelTemplate)
            self.class_prompts = {
                c: [t.format(w) for t in templates for w in verbalizer.words(c)]
                for c in verbalizer.class_names
            }
        for c, prompts in self.class_prompts.items():
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise ValueError(f"Class {c!r} needs non-empty prompts. Received: {prompts!r}")
        self.class_names = list(self.class_prompts)
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature!r}")
        self.temperature = temperature
        self._class_embeddings = None

    def _token_ids(self, prompts):
        import keras_hub

        text = tf.constant(prompts)
        if getattr(self.preprocessor, "to_lower", False):
            text = tf.strings.lower(text)
        packer = keras_hub.layers.StartEndPacker(
            start_value=self.tokenizer.start_token_id,
            end_value=self.tokenizer.end_token_id,
            pad_value=self.tokenizer.pad_token_id,
            sequence_length=self.sequence_length,
            return_padding_mask=False,
        )
        return packer(self.tokenizer(text))

    def text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """Unit-norm projected text embeddings, `(len(prompts), projection_dim)`."""
        emb = self.backbone.get_text_embeddings(self._token_ids(list(prompts)))
        return tf.math.l2_normalize(tf.cast(emb, tf.float32), axis=-1).numpy()

    def image_embeddings(self, images: npt.ArrayLike | tf.Tensor) -> np.ndarray:
        """Unit-norm projected image embeddings, `(n, projection_dim)`."""
        images = tf.convert_to_tensor(images)
        if images.shape.rank == 3:
            images = images[None]
        if self.image_converter is not None:
            images = self.image_converter(images)
        emb = self.backbone.get_vision_embeddings(tf.cast(images, self.backbone.compute_dtype))
        return tf.math.l2_normalize(tf.cast(emb, tf.float32), axis=-1).numpy()

    def class_embeddings(self) -> np.ndarray:
        """Unit-norm class embeddings, `(num_classes, projection_dim)` (computed once)."""
        if self._class_embeddings is None:
            rows = []
            for c in self.class_names:
                mean = self.text_embeddings(self.class_prompts[c]).mean(axis=0)
                rows.append(mean / max(np.linalg.norm(mean), 1e-12))
            self._class_embeddings = np.stack(rows).astype(np.float32)
        return self._class_embeddings

    def _scale(self):
        if self.temperature is not None:
            return 1.0 / self.temperature
        head = self.backbone.clip_head
        if getattr(head, "logit_scale", None) is not None:
            return float(np.exp(np.asarray(head.logit_scale)))
        return 1.0 / 0.07

    def logits(self, images: npt.ArrayLike | tf.Tensor) -> np.ndarray:
        """Scaled cosine similarities, `(n, num_classes)`."""
        return self._scale() * self.image_embeddings(images) @ self.class_embeddings().T

    def predict_proba(self, images: npt.ArrayLike | tf.Tensor) -> np.ndarray:
        return softmax(self.logits(images))

    def predict(self, images: npt.ArrayLike | tf.Tensor) -> list[str]:
        """Returns the predicted class names."""
        return [self.class_names[i] for i in self.logits(images).argmax(axis=-1)]
