"""Why the model decided: token attributions for texts, heat maps for images.

`explain(model, inputs, method=...)` returns an `Explanation` (arrays) that
draws itself (`save_plots`) and saves itself (`save`):

- `"integrated_gradients"` (texts): Sundararajan et al. (2017) on the token
  embeddings. The embeddings move in a straight line from a baseline (the
  `[PAD]` token's embedding at every non-special position, or `[MASK]`'s, or
  zeros) to the text's own; the gradients of the explained class's score
  along the way, times the embedding difference, summed over the embedding
  axis, give one attribution per token. They add up to `score(text) -
  score(baseline)` (completeness); the trapezoid rule over `steps` gets close
  to that, and each example reports how close (`completeness_error`).
- `"grad_cam"` (images, CNN backbones): Selvaraju et al. (2017) on the last
  4-D feature map (a `tfft.Task`'s backbone output): channel weights are the
  spatially averaged gradients of the class score, the map is the ReLU of
  the weighted channel sum, resized onto the input image.
- `"occlusion"` (texts and images, any model, a reloaded SavedModel too):
  the score drop when a word is removed or a patch is greyed out. It needs
  only forward passes.

No maintained library offers integrated gradients or Grad-CAM for Keras 3
(tf-explain and alibi target Keras 2 / tf.keras; Captum is PyTorch), so both
are written here with `tf.GradientTape`. The model is split into parts with
Keras' own functional API (a `keras.Model` between two tensors of the
model's graph shares its layers and weights), and every explanation first
checks that the parts put back together give the model's own outputs.

The score explained is the model's output for the target class: its
probability for tfft tasks and Keras classifiers with a softmax.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.evaluation.plots import new_figure, save_figure
from tfft.evaluation.signatures import predict_fn
from tfft.models.task import Task
from tfft.utils.checks import check_int
from tfft.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

METHODS = ("auto", "integrated_gradients", "grad_cam", "occlusion")
BASELINES = ("auto", "pad", "mask", "zeros")
DEFAULT_STEPS = 50
COMPLETENESS_TOLERANCE = 0.05
# The parts of a split model must reproduce its outputs within this.
_PARITY_ATOL = 1e-3


@dataclasses.dataclass
class Explanation:
    """Attributions of a model's scores to the parts of its inputs.

    Args:
        method: str. `"integrated_gradients"`, `"grad_cam"` or `"occlusion"`.
        modality: str. `"text"` or `"image"`.
        targets: np.ndarray `(n,)`. The class explained for each example.
        scores: np.ndarray `(n,)`. The model's score of that class.
        probabilities: np.ndarray `(n, k)`. The model's outputs.
        attributions: list of np.ndarray. Texts: one value per token
            (`tokens`) for integrated gradients, per word (`words`) for
            occlusion. Images: an `(height, width)` map at the image's size.
        class_names: list of str or None.
        tokens: list of list of str, or None. Texts: the tokens attributed.
        words: list of list of str, or None. Texts: whole words (WordPiece
            pieces joined).
        word_attributions: list of np.ndarray, or None. Texts: per word (the
            sum of its tokens' attributions).
        images: list of np.ndarray, or None. Images: the raw images, for
            the overlays.
        baseline_scores: np.ndarray or None. Integrated gradients: the score
            of the baseline input.
        completeness_error: np.ndarray or None. Integrated gradients:
            `|sum(attributions) - (score - baseline_score)|` over
            `|score - baseline_score|`, per example.
        settings: dict. The method's arguments (steps, baseline ...).
        baselines: list of str or None. Integrated gradients: the baseline
            used for each example (`"pad"`, `"mask"` or `"zeros"`).
    """

    method: str
    modality: str
    targets: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray
    attributions: list
    class_names: list | None = None
    tokens: list | None = None
    words: list | None = None
    word_attributions: list | None = None
    images: list | None = dataclasses.field(default=None, repr=False)
    baseline_scores: np.ndarray | None = None
    completeness_error: np.ndarray | None = None
    settings: dict = dataclasses.field(default_factory=dict)
    baselines: list | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def target_name(self, i: int) -> str:
        """The name of the class explained for example `i`."""
        t = int(self.targets[i])
        return self.class_names[t] if self.class_names else str(t)

    def top_words(self, i: int, k: int = 5) -> list[tuple[str, float]]:
        """Example `i`'s `k` words with the largest attributions toward the target."""
        if self.words is None:
            raise ValueError(f"top_words needs a text explanation. This one is {self.modality}.")
        values = self.word_attributions[i]
        order = np.argsort(-values, kind="stable")[:k]
        return [(self.words[i][j], float(values[j])) for j in order]

    @property
    def completeness_ok(self) -> bool | None:
        """All examples within the tolerance (integrated gradients), else None."""
        if self.completeness_error is None:
            return None
        tolerance = self.settings.get("tolerance", COMPLETENESS_TOLERANCE)
        return bool(np.all(self.completeness_error <= tolerance))

    def to_dict(self) -> dict:
        """A JSON-ready summary: per example the target, score and attributions.

        Image heat maps are left out (`save` writes them to an `.npz`).
        """
        examples = []
        for i in range(len(self)):
            row = {"target": self.target_name(i), "target_id": int(self.targets[i]),
                   "score": float(self.scores[i])}
            if self.baseline_scores is not None:
                row["baseline_score"] = float(self.baseline_scores[i])
                row["completeness_error"] = float(self.completeness_error[i])
                row["baseline"] = self.baselines[i]
            if self.tokens is not None:
                row["tokens"] = list(self.tokens[i])
                row["token_attributions"] = [float(v) for v in self.attributions[i]]
            if self.words is not None:
                row["words"] = list(self.words[i])
                row["word_attributions"] = [float(v) for v in self.word_attributions[i]]
                row["top_words"] = [w for w, _ in self.top_words(i, 10)]
            else:
                heat = np.asarray(self.attributions[i])
                row["heatmap_shape"] = list(heat.shape)
            examples.append(row)
        return {"method": self.method, "modality": self.modality, "settings": self.settings,
                "completeness_ok": self.completeness_ok, "examples": examples}

    def save(self, directory: str, name: str = "explanations") -> list[str]:
        """Writes `NAME.json`, the picture `NAME.png` and (images) `NAME.npz`; returns paths."""
        os.makedirs(directory, exist_ok=True)
        paths = [write_json_atomic(os.path.join(directory, f"{name}.json"), self.to_dict(),
                                   allow_nan=False)]
        if self.modality == "image":
            path = os.path.join(directory, f"{name}.npz")
            np.savez_compressed(path, **{f"heatmap_{i}": np.asarray(a, np.float32)
                                         for i, a in enumerate(self.attributions)})
            paths.append(path)
        paths.extend(self.save_plots(os.path.join(directory, f"{name}.png")))
        return paths

    def save_plots(self, path: str, titles: Sequence[str] | None = None) -> list[str]:
        """Draws highlighted words (texts) or heat-map overlays (images) to a PNG."""
        if self.modality == "text":
            return [plot_text_attributions(self, path, titles=titles)]
        return [plot_image_attributions(self, path, titles=titles)]


# -- the entry point -------------------------------------------------------------------


def explain(
    model: Any,
    inputs: Any,
    method: str = "auto",
    targets: Any = None,
    class_names: list | None = None,
    preprocessor: Callable | None = None,
    steps: int = DEFAULT_STEPS,
    baseline: str = "auto",
    batch_size: int = 32,
    tolerance: float = COMPLETENESS_TOLERANCE,
    patches: int = 8,
    max_words: int = 128,
    layer: str | None = None,
) -> Explanation:
    """Attributes a model's class scores to the words or pixels of its inputs.

    Args:
        model: a `tfft.Task`; a Keras model (then `preprocessor` maps raw
            inputs to its inputs, if it needs one); or, for `"occlusion"`, a
            SavedModel reloaded with `tf.saved_model.load` (raw inputs to its
            `serving_default`) or any callable returning scores.
        inputs: raw texts (a list of str), or raw images (a list or array of
            `(height, width, 3)` 0-255 arrays; sizes may differ).
        method: str. `"integrated_gradients"` (texts), `"grad_cam"` (images),
            `"occlusion"` (either, any model) or `"auto"`: integrated
            gradients for texts and Grad-CAM for images on Keras models,
            occlusion otherwise. Defaults to `"auto"`.
        targets: None (each example's predicted class), an int or class name
            for all, or one per example. Defaults to None.
        class_names: list of str or None. Defaults to the task's.
        preprocessor: callable or None. Raw inputs to model inputs for a plain
            Keras model. Defaults to the task's own.
        steps: int. Integrated gradients: intervals of the path integral.
            Defaults to 50.
        baseline: str. Integrated gradients: the token embeddings at the
            path's start, at every position but the special tokens (`[CLS]`,
            `[SEP]`), which stay: `"pad"` (the `[PAD]` embedding), `"mask"`
            (`[MASK]`), `"zeros"`, or `"auto"`: of those, per text, the one
            whose outputs are nearest to uniform (highest entropy), so the
            attributions explain the decision rather than a baseline the
            model already scores high (the fine-tuned BBC MiniLM gives an
            all-`[PAD]` text 0.95 sports). `Explanation.baselines` records
            the choice. Defaults to `"auto"`.
        batch_size: int. Path points (or occluded copies) per forward pass.
            Defaults to 32.
        tolerance: float. Integrated gradients: the completeness error above
            which a warning is logged. Defaults to 0.05.
        patches: int. Image occlusion: the grid is `patches x patches`.
            Defaults to 8.
        max_words: int. Text occlusion: words tried per text (the first
            ones). Defaults to 128.
        layer: str or None. Grad-CAM: the layer whose 4-D output is used;
            defaults to the last top-level layer with a 4-D output (a task's
            backbone).

    Returns:
        An `Explanation`.

    Example:

    >>> explanation = explain(task, ["Arsenal won the cup final"], steps=32)
    >>> explanation.top_words(0, 3)
    >>> explanation.save("runs/explain")
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method. Expected one of {list(METHODS)}. "
                         f"Received: method={method!r}")
    if baseline not in BASELINES:
        raise ValueError(f"Unknown baseline. Expected one of {list(BASELINES)}. "
                         f"Received: baseline={baseline!r}")
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    patches = check_int("patches", patches)
    max_words = check_int("max_words", max_words)
    if preprocessor is not None and not callable(preprocessor):
        raise TypeError(f"preprocessor must be callable or None. Received: {type(preprocessor)}")
    modality, inputs = _modality(model, inputs)
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    if isinstance(model, Task) and preprocessor is None:
        preprocessor = model.preprocess
    is_keras = isinstance(model, keras.Model)
    if method == "auto":
        method = ("integrated_gradients" if modality == "text" else "grad_cam") if is_keras \
            else "occlusion"
    if method == "integrated_gradients" and modality != "text":
        raise ValueError("integrated_gradients explains texts (token embeddings); for images "
                         "use method='grad_cam' or 'occlusion'.")
    if method == "grad_cam" and modality != "image":
        raise ValueError("grad_cam explains images; for texts use method="
                         "'integrated_gradients' or 'occlusion'.")
    if method != "occlusion" and not is_keras:
        raise TypeError(
            f"{method} needs a Keras model (a tfft.Task or keras.Model) to take gradients. "
            f"Received: {type(model).__name__}. Use method='occlusion' for a SavedModel or "
            "callable, or pass the export's Keras source (the .keras file it came from)."
        )
    settings = {"method": method}
    logger.info("Explaining %d %ss with %s", len(inputs), modality, method)
    if method == "integrated_gradients":
        settings.update(steps=steps, baseline=baseline, tolerance=float(tolerance))
        result = _integrated_gradients(model, inputs, targets, class_names, preprocessor,
                                       steps, baseline, batch_size, tolerance)
    elif method == "grad_cam":
        settings.update(layer=layer)
        result = _grad_cam(model, inputs, targets, class_names, preprocessor, layer)
    else:
        settings.update(patches=patches, max_words=max_words)
        predict = _raw_predict(model, preprocessor)
        if modality == "text":
            result = _occlude_text(predict, inputs, targets, class_names, batch_size, max_words)
        else:
            result = _occlude_images(predict, inputs, targets, class_names, batch_size, patches)
    result.settings = settings
    return result


def load_keras_source(path: str) -> keras.Model:
    """Loads the `.keras` file of a task (what `tfft export --model` takes), safely.

    Keras' safe mode stays on: a file holding Python code (a Lambda layer) is
    refused rather than run.
    """
    path = os.fspath(path)
    if not path.endswith(".keras") or not os.path.isfile(path):
        raise ValueError(
            "The Keras source must be an existing .keras file (a saved tfft.Task, the file "
            f"`tfft export --model` takes). Received: {path!r}"
        )
    return keras.saving.load_model(path, safe_mode=True, compile=False)


# -- shared helpers ----------------------------------------------------------------------


def _modality(model, inputs):
    info = getattr(model, "backbone_info", None)
    if isinstance(inputs, str):
        raise TypeError("inputs must be a list of texts or images, not one string. "
                        f"Received: {inputs[:40]!r}")
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "biuf":
        if inputs.ndim == 3:
            inputs = inputs[None]
        if inputs.ndim != 4:
            raise ValueError(f"Images must be (n, height, width, channels). "
                             f"Received shape {inputs.shape}")
        items = list(inputs)
    else:
        items = list(inputs)
    if not items:
        raise ValueError("inputs is empty: nothing to explain.")
    if all(isinstance(x, (str, bytes)) for x in items):
        modality = "text"
        items = [x.decode("utf-8") if isinstance(x, bytes) else x for x in items]
    else:
        items = [np.asarray(x) for x in items]
        if any(x.ndim != 3 or x.dtype.kind not in "biuf" for x in items):
            raise ValueError(
                "inputs must be texts (str) or images of shape (height, width, channels). "
                f"Received items of shapes {[x.shape for x in items[:3]]}"
            )
        modality = "image"
    if info is not None and info.modality != modality:
        raise ValueError(f"The model takes {info.modality}s but inputs holds {modality}s.")
    return modality, items


def _raw_predict(model, preprocessor):
    """`raw batch -> np.ndarray of scores` for any model explain() takes."""
    if isinstance(model, Task):
        return lambda x: np.asarray(model.predict_on_batch(_batch(x)))
    if isinstance(model, keras.Model) and preprocessor is not None:
        return lambda x: np.asarray(model.predict_on_batch(preprocessor(_batch(x))))
    call = predict_fn(model)
    return lambda x: np.asarray(call(_batch(x)))


def _batch(items):
    if isinstance(items[0], str):
        return np.asarray(items, dtype=object)
    return np.stack(items)


def _resolve_targets(targets, probabilities, class_names):
    n, k = probabilities.shape
    if targets is None:
        ids = probabilities.argmax(axis=1) if k > 1 else (probabilities[:, 0] >= 0.5)
        return np.asarray(ids, np.int64)
    values = [targets] * n if isinstance(targets, (int, np.integer, str)) else list(targets)
    if len(values) != n:
        raise ValueError(f"targets has {len(values)} entries for {n} inputs.")
    ids = []
    width = max(k, 2)
    for value in values:
        if isinstance(value, str):
            if not class_names or value not in class_names:
                raise ValueError(f"Unknown target class {value!r}. Class names: {class_names}")
            value = list(class_names).index(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
                0 <= value < width):
            raise ValueError(f"Targets must be class ids in [0, {width}) or class names. "
                             f"Received: {value!r}")
        ids.append(int(value))
    return np.asarray(ids, np.int64)


def _target_score(outputs, target):
    """The score of class `target` in a batch of outputs (one sigmoid output: binary)."""
    if outputs.shape[-1] == 1:
        p = outputs[:, 0]
        return p if target == 1 else 1.0 - p
    return outputs[:, target]


def _scores_of(probabilities, targets):
    return np.array([float(_target_score(probabilities[i:i + 1], t)[0])
                     for i, t in enumerate(targets)])


# -- integrated gradients on token embeddings ---------------------------------------------


class _TextParts:
    """A text model cut at its token embeddings: `embed(ids)` and `score(embeddings, ...)`."""

    def __init__(self, model):
        if not isinstance(model, Task):
            raise TypeError(
                "integrated_gradients takes a tfft.Task whose backbone has a "
                f"'token_embedding' layer (KerasHub text backbones). Received: "
                f"{type(model).__name__}. Use method='occlusion' for other models."
            )
        backbone = model.backbone
        names = [layer.name for layer in backbone.layers]
        if "token_embedding" not in names or not isinstance(backbone.input, dict):
            raise ValueError(
                "integrated_gradients needs a backbone with a 'token_embedding' layer and "
                f"dict inputs (KerasHub text backbones). {backbone.name!r} has layers "
                f"{names[:8]}... Use method='occlusion'."
            )
        # The task's layers, not the task: the cache below holds these parts weakly keyed
        # by the task, and a reference back to it would keep it alive.
        self.head, self.pooling = model.head, model.pooling
        self.output_key = model.backbone_layer.output_key
        self.embedding = backbone.get_layer("token_embedding")
        self.other_keys = sorted(k for k in backbone.input if k != "token_ids")
        # A functional model from the embedding's output on: the backbone's own layers.
        self.rest = keras.Model(
            [self.embedding.output] + [backbone.input[k] for k in self.other_keys],
            backbone.output,
        )
        info = model.backbone_info
        self.mask_key = info.mask_key if info is not None else None
        self.tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
        width = int(self.embedding.output.shape[-1])
        # One trace for every length and batch: shapes are left open.
        self.gradients = tf.function(self._gradients, input_signature=[
            tf.TensorSpec([None, None, width], tf.float32),
            {k: tf.TensorSpec([None, None], tf.int32) for k in self.other_keys},
            tf.TensorSpec([], tf.int32),
        ])

    def _gradients(self, embeddings, others, target):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            outputs = self.score_outputs(embeddings, others)
            if outputs.shape[-1] == 1:
                score = tf.where(target == 1, outputs[:, 0], 1.0 - outputs[:, 0])
            else:
                score = tf.gather(outputs, target, axis=1)
        return tape.gradient(score, embeddings), score

    def score_outputs(self, embeddings, features):
        others = [features[k] for k in self.other_keys]
        outputs = self.rest([embeddings, *others], training=False)
        if self.output_key is not None:
            outputs = outputs[self.output_key]
        mask = features.get(self.mask_key) if self.mask_key else None
        return self.head(self.pooling(outputs, mask=mask))


_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _text_parts(model, preprocessor):
    """The model's `_TextParts`, built once per model (its traced gradient function too)."""
    parts = _PARTS.get(model)
    if parts is None:
        parts = _PARTS[model] = _TextParts(model)
    return parts


def _special_ids(tokenizer):
    ids = set(getattr(tokenizer, "special_token_ids", None) or [])
    for name in ("cls_token_id", "sep_token_id", "start_token_id", "end_token_id",
                 "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            ids.add(int(value))
    return ids


def _baseline_id(tokenizer, baseline):
    if baseline == "zeros":
        return None
    attribute = {"pad": "pad_token_id", "mask": "mask_token_id"}[baseline]
    value = getattr(tokenizer, attribute, None)
    if value is None:
        raise ValueError(f"The tokenizer has no {attribute} for baseline={baseline!r}. "
                         "Use baseline='zeros'.")
    return int(value)


def _baseline_embeddings(parts, ids, keep, tokenizer, baseline, x_emb):
    """The baseline's token embeddings: special tokens kept, every other one replaced."""
    fill = _baseline_id(tokenizer, baseline)
    if fill is None:
        return np.where(keep[:, None], x_emb, 0.0).astype(x_emb.dtype)
    return np.asarray(parts.embedding(np.where(keep, ids, fill)[None]))[0]


def _integrated_gradients(model, texts, targets, class_names, preprocessor, steps, baseline,
                          batch_size, tolerance):
    parts = _text_parts(model, preprocessor)
    tokenizer = parts.tokenizer
    if preprocessor is None or tokenizer is None:
        raise ValueError("integrated_gradients needs the task's text preprocessor (with a "
                         "tokenizer) to turn texts into tokens.")
    features = {k: np.asarray(v) for k, v in preprocessor(_batch(texts)).items()}
    probabilities = np.asarray(model.predict_on_batch(features), np.float64)
    target_ids = _resolve_targets(targets, probabilities, class_names)
    special = _special_ids(tokenizer)
    candidates = [b for b in BASELINES if b != "auto"] if baseline == "auto" else [baseline]
    if baseline == "auto":
        candidates = [b for b in candidates if b == "zeros"
                      or getattr(tokenizer, {"pad": "pad_token_id",
                                             "mask": "mask_token_id"}[b], None) is not None]
    # Trapezoid rule on [0, 1]: steps + 1 points, end points weighted by a half.
    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    weights = np.full(steps + 1, 1.0 / steps, np.float32)
    weights[[0, -1]] /= 2.0

    tokens, attributions, baseline_scores, path_scores, errors, chosen = [], [], [], [], [], []
    for i in range(len(texts)):
        ids = features["token_ids"][i]
        mask = (features["padding_mask"][i] if "padding_mask" in features
                else ids != getattr(tokenizer, "pad_token_id", 0)).astype(bool)
        length = int(np.max(np.flatnonzero(mask))) + 1 if mask.any() else 1
        # The text's own length: padding carries no attention and costs time.
        one = {k: v[i:i + 1, :length] for k, v in features.items()}
        ids = ids[:length]
        keep = np.array([int(t) in special for t in ids]) | ~mask[:length]
        x_emb = np.asarray(parts.embedding(one["token_ids"]))[0]
        options = [_baseline_embeddings(parts, ids, keep, tokenizer, b, x_emb)
                   for b in candidates]
        pick = 0
        if len(options) > 1:
            # The least informative baseline: the one whose outputs are nearest to
            # uniform (highest entropy), so the attributions explain the decision.
            others = {k: np.repeat(v, len(options), axis=0) for k, v in one.items()}
            outputs = np.asarray(parts.score_outputs(np.stack(options), others), np.float64)
            if outputs.shape[-1] == 1:
                outputs = np.concatenate([1.0 - outputs, outputs], axis=-1)
            clipped = np.clip(outputs, 1e-12, 1.0)
            pick = int(np.argmax(-(clipped * np.log(clipped)).sum(axis=-1)))
        b_emb = options[pick]
        chosen.append(candidates[pick])
        diff = x_emb - b_emb
        total = np.zeros_like(x_emb)
        end_scores = {}
        target = tf.constant(int(target_ids[i]), tf.int32)
        for start in range(0, len(alphas), batch_size):
            a = alphas[start:start + batch_size]
            path = b_emb[None] + a[:, None, None] * diff[None]
            others = {k: tf.constant(np.repeat(one[k], len(a), axis=0).astype(np.int32))
                      for k in parts.other_keys}
            grads, s = parts.gradients(tf.constant(path, tf.float32), others, target)
            total += np.tensordot(weights[start:start + batch_size], np.asarray(grads), axes=1)
            s = np.asarray(s)
            for j, alpha in enumerate(a):
                if alpha in (0.0, 1.0):
                    end_scores[float(alpha)] = float(s[j])
        attribution = np.sum(total * diff, axis=-1)
        delta = end_scores[1.0] - end_scores[0.0]
        errors.append(abs(float(attribution.sum()) - delta) / max(abs(delta), 1e-12))
        attributions.append(attribution.astype(np.float64))
        baseline_scores.append(end_scores[0.0])
        path_scores.append(end_scores[1.0])
        tokens.append([tokenizer.id_to_token(int(t)) for t in ids])
        if (i + 1) % 10 == 0 or i + 1 == len(texts):
            logger.info("Integrated gradients: %d/%d texts", i + 1, len(texts))
    scores = _scores_of(probabilities, target_ids)
    path_scores = np.array(path_scores)
    if np.max(np.abs(path_scores - scores)) > _PARITY_ATOL:
        raise RuntimeError(
            "The model cut at its token embeddings does not reproduce its outputs (largest "
            f"difference {np.max(np.abs(path_scores - scores)):.3g}); integrated gradients "
            "would explain another function. Use method='occlusion'."
        )
    errors = np.array(errors)
    if np.any(errors > tolerance):
        logger.warning(
            "Integrated gradients: %d of %d examples miss completeness by more than %.0f%% "
            "(worst %.1f%%); raise steps (now %d).", int(np.sum(errors > tolerance)),
            len(errors), 100 * tolerance, 100 * errors.max(), steps)
    words, word_values = zip(*[_merge_pieces(t, a, special_tokens=_special_strings(tokenizer))
                               for t, a in zip(tokens, attributions, strict=True)],
                             strict=True)
    return Explanation(
        method="integrated_gradients", modality="text", targets=target_ids, scores=scores,
        probabilities=probabilities, attributions=attributions, class_names=class_names,
        tokens=tokens, words=list(words), word_attributions=list(word_values),
        baseline_scores=np.array(baseline_scores), completeness_error=errors,
        baselines=chosen,
    )


def _special_strings(tokenizer):
    names = set(getattr(tokenizer, "special_tokens", None) or [])
    for i in _special_ids(tokenizer):
        names.add(tokenizer.id_to_token(i))
    return names


def _merge_pieces(tokens, values, special_tokens=()):
    """Joins WordPiece (`##`) and SentencePiece (`▁`) pieces into words, summing values."""
    words, sums = [], []
    sentencepiece = any(t.startswith("\u2581") for t in tokens)
    for token, value in zip(tokens, values, strict=True):
        if token in special_tokens:
            continue
        if token.startswith("##") and words:
            words[-1] += token[2:]
            sums[-1] += value
        elif sentencepiece and not token.startswith("\u2581") and words:
            words[-1] += token
            sums[-1] += value
        else:
            words.append(token.lstrip("\u2581"))
            sums.append(float(value))
    return words, np.asarray(sums, np.float64)


# -- Grad-CAM ----------------------------------------------------------------------------


def _feature_layer(model, name):
    if name is not None:
        return model.get_layer(name)
    if isinstance(model, Task):
        return model.backbone_layer
    for candidate in reversed(model.layers):
        output = getattr(candidate, "output", None)
        if output is not None and not isinstance(output, (list, tuple, dict)) and len(
                output.shape) == 4:
            return candidate
    raise ValueError(
        f"grad_cam found no layer with a 4-D (feature map) output in {model.name!r}; pass "
        "layer='NAME', or use method='occlusion' for models without a convolutional map."
    )


def _split_at(model, layer):
    """`(inputs -> layer's output, layer's output -> model's output)` as two callables.

    A layer called once in the model's graph splits with Keras' functional API.
    A nested model used as a layer (a KerasHub backbone inside a classifier)
    reports the output of its own graph instead, so the model is then read as
    the chain of its top-level layers; the parity check in `_grad_cam`
    refuses any model that is not such a chain.
    """
    nested = isinstance(layer, keras.Model)
    if not nested:
        return keras.Model(model.inputs, layer.output), keras.Model(layer.output, model.output)
    layers = [item for item in model.layers if not isinstance(item, keras.layers.InputLayer)]
    after = layers[layers.index(layer) + 1:]
    before = layers[:layers.index(layer) + 1]

    def run(chain):
        def call(x, training=False):
            for item in chain:
                x = item(x, training=training)
            return x
        return call

    return run(before), run(after)


def _grad_cam(model, images, targets, class_names, preprocessor, layer_name):
    layer = _feature_layer(model, layer_name)
    if len(layer.output.shape) != 4:
        raise ValueError(f"grad_cam needs a 4-D feature map; layer {layer.name!r} outputs "
                         f"shape {layer.output.shape}.")
    features_model, head_model = _split_at(model, layer)
    heatmaps, outputs = [], []
    target_ids = []
    for i, image in enumerate(images):
        x = image[None]
        if preprocessor is not None:
            x = preprocessor(x)
        x = tf.convert_to_tensor(x)
        own = np.asarray(model(x, training=False), np.float64)
        feature_map = features_model(x, training=False)
        with tf.GradientTape() as tape:
            tape.watch(feature_map)
            scores = head_model(feature_map, training=False)
        probs = np.asarray(scores, np.float64)
        if np.max(np.abs(probs - own)) > _PARITY_ATOL:
            raise RuntimeError(
                f"The model cut at layer {layer.name!r} does not reproduce its outputs; pass "
                "layer='NAME' of the feature map that feeds the head.")
        target = _resolve_targets(None if targets is None else _nth_target(targets, i),
                                  probs, class_names)[0]
        with tf.GradientTape() as tape:
            tape.watch(feature_map)
            score = _target_score(head_model(feature_map, training=False), int(target))
        grads = tape.gradient(score, feature_map)
        channel_weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(channel_weights * feature_map, axis=-1))[0]
        # Back onto the raw image (the preprocessor resized it to the model's size).
        cam = tf.image.resize(cam[..., None], image.shape[:2], method="bilinear")[..., 0]
        heatmaps.append(np.asarray(cam, np.float64))
        outputs.append(probs[0])
        target_ids.append(int(target))
    probabilities = np.stack(outputs)
    target_ids = np.asarray(target_ids, np.int64)
    return Explanation(
        method="grad_cam", modality="image", targets=target_ids,
        scores=_scores_of(probabilities, target_ids), probabilities=probabilities,
        attributions=heatmaps, class_names=class_names, images=list(images),
    )


def _nth_target(targets, i):
    if isinstance(targets, (int, np.integer, str)):
        return targets
    return [list(targets)[i]]


# -- occlusion ---------------------------------------------------------------------------


def _predict_all(predict, items, batch_size):
    out = [predict(items[s:s + batch_size]) for s in range(0, len(items), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float64)


def _occlude_text(predict, texts, targets, class_names, batch_size, max_words):
    probabilities = _predict_all(predict, texts, batch_size)
    target_ids = _resolve_targets(targets, probabilities, class_names)
    words, values = [], []
    for i, text in enumerate(texts):
        tokens = text.split()
        tried = tokens[:max_words]
        variants = [" ".join(tokens[:j] + tokens[j + 1:]) for j in range(len(tried))]
        base = float(_target_score(probabilities[i:i + 1], int(target_ids[i]))[0])
        if variants:
            scores = _target_score(_predict_all(predict, variants, batch_size),
                                   int(target_ids[i]))
            values.append(base - np.asarray(scores, np.float64))
        else:
            values.append(np.zeros(0))
        words.append(tried)
    return Explanation(
        method="occlusion", modality="text", targets=target_ids,
        scores=_scores_of(probabilities, target_ids), probabilities=probabilities,
        attributions=values, class_names=class_names, words=words, word_attributions=values,
    )


def _occlude_images(predict, images, targets, class_names, batch_size, patches):
    probabilities = np.concatenate([predict([im]) for im in images]).astype(np.float64)
    target_ids = _resolve_targets(targets, probabilities, class_names)
    heatmaps = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        rows = np.linspace(0, h, patches + 1).astype(int)
        cols = np.linspace(0, w, patches + 1).astype(int)
        fill = image.reshape(-1, image.shape[-1]).mean(axis=0).astype(image.dtype)
        copies, boxes = [], []
        for r in range(patches):
            for c in range(patches):
                copy = image.copy()
                copy[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = fill
                copies.append(copy)
                boxes.append((rows[r], rows[r + 1], cols[c], cols[c + 1]))
        base = float(_target_score(probabilities[i:i + 1], int(target_ids[i]))[0])
        scores = _target_score(_predict_all(predict, copies, batch_size), int(target_ids[i]))
        heat = np.zeros((h, w))
        for (r0, r1, c0, c1), score in zip(boxes, scores, strict=True):
            heat[r0:r1, c0:c1] = base - float(score)
        heatmaps.append(heat)
    return Explanation(
        method="occlusion", modality="image", targets=target_ids,
        scores=_scores_of(probabilities, target_ids), probabilities=probabilities,
        attributions=heatmaps, class_names=class_names, images=list(images),
    )


# -- pictures ----------------------------------------------------------------------------


def _default_title(explanation, i):
    title = f"#{i}: {explanation.target_name(i)} ({explanation.scores[i]:.2f})"
    if explanation.completeness_error is not None:
        title += f", completeness error {100 * explanation.completeness_error[i]:.2f}%"
    return title


def plot_text_attributions(explanation: Explanation, path: str,
                           titles: Sequence[str] | None = None, max_words: int = 120) -> str:
    """Draws each text's words on a colour scale of their attributions; writes a PNG.

    Red words raise the explained class's score, blue ones lower it; each
    text is scaled by its own largest absolute attribution.

    Args:
        explanation: a text `Explanation`.
        path: str. Where to write the PNG.
        titles: list of str or None. One line above each text; defaults to
            the target class, its score and (integrated gradients) the
            completeness error.
        max_words: int. Words drawn per text. Defaults to 120.

    Returns:
        The path written.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    if explanation.modality != "text":
        raise ValueError("plot_text_attributions draws text explanations; use "
                         "plot_image_attributions for images.")
    cmap = colormaps["RdBu_r"]
    width_px, line_px, font = 1000, 22, 11
    # Layout in pixels in a monospaced font (0.6 em per character at 100 dpi):
    # measuring every word with the renderer instead costs seconds.
    char_px = 0.6 * font * 100 / 72
    lines_per_text = []
    for i in range(len(explanation)):
        x, lines = 0, 1
        for word in explanation.words[i][:max_words]:
            w = char_px * len(word) + 10
            if x + w > width_px - 20:
                lines, x = lines + 1, 0
            x += w
        lines_per_text.append(lines + 1)
    height_px = line_px * (sum(lines_per_text) + 2) + 20
    fig = new_figure(width_px / 100, height_px / 100)
    fig.set_layout_engine(None)
    y = height_px - line_px
    fig.text(10 / width_px, y / height_px, f"{explanation.method}: red raises the explained "
             "class's score, blue lowers it (each text scaled to its largest value)",
             fontsize=font - 1, color="0.3", va="center")
    y -= line_px
    for i in range(len(explanation)):
        values = explanation.word_attributions[i][:max_words]
        scale = float(np.max(np.abs(values))) if len(values) else 1.0
        norm = Normalize(-scale or -1.0, scale or 1.0)
        title = titles[i] if titles is not None else _default_title(explanation, i)
        fig.text(10 / width_px, y / height_px, title, fontsize=font, fontweight="bold",
                 va="center")
        y -= line_px
        x = 10
        for word, value in zip(explanation.words[i][:max_words], values, strict=True):
            w = char_px * len(word) + 10
            if x + w > width_px - 20:
                x, y = 10, y - line_px
            colour = cmap(norm(value))
            dark = abs(norm(value) - 0.5) > 0.35
            fig.text(x / width_px, y / height_px, word, fontsize=font, va="center",
                     family="DejaVu Sans Mono", color="white" if dark else "black",
                     bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.5})
            x += w
        y -= line_px
    return save_figure(fig, os.fspath(path))


def plot_image_attributions(explanation: Explanation, path: str,
                            titles: Sequence[str] | None = None) -> str:
    """Draws each image beside its heat map overlaid on it; writes a PNG.

    Args:
        explanation: an image `Explanation`.
        path: str. Where to write the PNG.
        titles: list of str or None. Defaults to the target class and score.

    Returns:
        The path written.
    """
    if explanation.modality != "image":
        raise ValueError("plot_image_attributions draws image explanations; use "
                         "plot_text_attributions for texts.")
    n = len(explanation)
    fig = new_figure(8.0, 3.8 * n)
    axes = np.atleast_2d(fig.subplots(n, 2))
    for i in range(n):
        image = np.asarray(explanation.images[i])
        shown = image.astype(np.float64)
        shown = shown / 255.0 if shown.max() > 1.0 else shown
        shown = np.clip(shown, 0.0, 1.0)
        heat = np.asarray(explanation.attributions[i], np.float64)
        top = float(np.max(np.abs(heat))) or 1.0
        axes[i, 0].imshow(shown)
        axes[i, 0].set_title(titles[i] if titles is not None else _default_title(explanation, i),
                             fontsize=9)
        axes[i, 1].imshow(shown)
        overlay = axes[i, 1].imshow(heat / top, cmap="jet", alpha=0.45,
                                    vmin=-1.0 if heat.min() < 0 else 0.0, vmax=1.0)
        axes[i, 1].set_title(f"{explanation.method} (scaled to its maximum)", fontsize=9)
        fig.colorbar(overlay, ax=axes[i, 1], shrink=0.8)
        for ax in axes[i]:
            ax.set_axis_off()
    return save_figure(fig, os.fspath(path))
