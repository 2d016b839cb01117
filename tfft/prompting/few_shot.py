"""Contrastive few-shot fine-tuning of a sentence encoder (SetFit's recipe, in Keras).

With a handful of labelled texts per class, `few_shot_fit`:

1. builds pairs of examples, positive (same class) and negative (different
   classes), from the labelled texts (`make_pairs`, or every pair inside
   class-balanced batches);
2. fine-tunes the encoder so that positive pairs embed close together and
   negative pairs apart (cosine similarity; the CoSENT ranking loss or
   SetFit's squared error to 1/0), through a tfft freeze policy (`"full"`,
   `"top_k:K"`, `"lora:R"`), then moves the tuned weights halfway back to
   the pretrained ones (`interpolation`, WiSE-FT's weight-space average);
3. fits the classification head on the tuned encoder's (L2-normalised,
   mean-pooled) embeddings of the same examples, optionally starting from
   the zero-shot head that label prompts give (`template=`).

It returns an ordinary `tfft.Task`: raw strings in, predicts, evaluates,
saves as `.keras` and exports like any other. Tunstall et al. (2022),
"Efficient Few-Shot Learning Without Prompts", describe the recipe; this is
tfft's own implementation on Keras 3.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.adapt import FeatureExtraction, FreezePolicy, parse_freeze
from tfft.backbones import Backbone, load_backbone
from tfft.models import Task, build_model
from tfft.prompting.templates import LabelTemplate, as_templates, as_verbalizer
from tfft.training.feature_cache import feature_model, head_model
from tfft.training.presets import compile_model
from tfft.utils.tfdata import trim_to_longest

logger = logging.getLogger(__name__)

PAIR_SAMPLINGS = ("in_batch", "balanced", "random")
CONTRASTIVE_LOSSES = ("cosent", "cosine_mse")
# SetFit's default: each example anchors 20 positive and 20 negative pairs.
PAIRS_PER_EXAMPLE = 40
# With in-batch pairs a step trains on many pairs; the default pair count still makes at
# least this many steps, so a handful of examples gets enough updates.
MIN_DEFAULT_STEPS = 20
# CoSENT's scale (Su, 2022): differences of cosines are multiplied by this.
COSENT_SCALE = 20.0
# The zero-shot head divides cosines by this temperature (as build_zero_shot_model).
PROMPT_TEMPERATURE = 0.05


def check_few_shot_data(
    texts: Sequence[str], labels: Sequence[Any], class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validates few-shot training data and encodes the labels as class ids.

    Args:
        texts: list of str. The labelled texts; none may be empty.
        labels: list of int class ids (indexing `class_names`) or of class
            names (str).
        class_names: list of str. The classes in id order. Defaults to the
            sorted distinct labels when they are names.

    Returns:
        `(texts, ids, class_names)`: an object array of str, int64 ids and
        the class names.

    Raises:
        ValueError: no texts, an empty text, lengths that differ, fewer than
            two classes, or a class with fewer than two examples (a class
            needs a positive pair). The message names the class and count.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of texts, not one str. Received: a str; "
                        "wrap it as [text].")
    texts = list(texts)
    labels = list(labels.tolist() if isinstance(labels, np.ndarray) else labels)
    if not texts:
        raise ValueError("few_shot_fit needs labelled texts. Received: no texts (empty list).")
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels differ in length. Received: {len(texts)} texts and "
                         f"{len(labels)} labels.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is not a str. Received: {type(text).__name__} "
                            f"{text!r:.60}")
        if not text.strip():
            raise ValueError(f"texts[{index}] is empty (label {labels[index]!r}): every "
                             "few-shot example needs text. Received: " + repr(text))
    if all(isinstance(label, str) for label in labels):
        names = list(class_names) if class_names is not None else sorted(set(labels))
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ValueError(f"Labels {unknown} are not in class_names {names}.")
        ids = np.array([names.index(label) for label in labels], dtype=np.int64)
    elif all(isinstance(label, (int, np.integer)) and not isinstance(label, bool)
             for label in labels):
        ids = np.asarray(labels, dtype=np.int64)
        top = int(ids.max()) + 1
        if class_names is None and top > len(ids):
            # Ids name classes 0..max, each needing 2 examples: refused before a
            # stray id (99999999) names 10^8 classes.
            raise ValueError(
                f"Label ids go up to {top - 1} for {len(ids)} examples, so most of the classes "
                f"0..{top - 1} would have no example; few-shot fitting needs at least 2 per "
                "class. Use ids 0..k-1 for k classes, or pass class_names."
            )
        names = ([str(i) for i in range(max(top, 2))] if class_names is None
                 else [str(name) for name in class_names])
        bad = sorted({int(i) for i in ids if not 0 <= i < len(names)})
        if bad:
            raise ValueError(f"Label ids must be in [0, {len(names)}) for class_names {names}. "
                             f"Received: {bad[:10]}")
    else:
        kinds = sorted({type(label).__name__ for label in labels})
        raise TypeError("labels must be all class ids (int) or all class names (str). "
                        f"Received: a mix of {kinds}")
    counts = {name: int(np.sum(ids == i)) for i, name in enumerate(names)}
    present = [name for name, count in counts.items() if count]
    if len(present) < 2:
        raise ValueError(
            f"Few-shot fitting needs examples of at least two classes; only class "
            f"{present[0]!r} has any ({counts[present[0]]} examples). Received counts: {counts}"
        )
    short = {name: count for name, count in counts.items() if count < 2}
    if short:
        name, count = next(iter(short.items()))
        raise ValueError(
            f"Class {name!r} has {count} example{'s' if count != 1 else ''}; few-shot fitting "
            f"needs at least 2 per class (a positive pair). Classes short of examples: {short}. "
            f"Received counts: {counts}"
        )
    return np.asarray(texts, dtype=object), ids, [str(n) for n in names]


def sample_shots(labels: Sequence[int], shots: int, seed: int = 0) -> np.ndarray:
    """Indices of `shots` examples per class (all of a smaller class), drawn with `seed`.

    Returns:
        Sorted int64 indices into `labels`.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive int. Received: shots={shots!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), min(shots, int(np.sum(labels == c))),
                         replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def make_pairs(labels: Sequence[int], num_pairs: int | None = None,
               sampling: str = "balanced", seed: int = 0) -> np.ndarray:
    """Pairs of example indices with a same-class flag, for contrastive training.

    Args:
        labels: int class ids, one per example.
        num_pairs: int. Pairs to draw. Defaults to `40 * len(labels)`
            (SetFit's 20 positive and 20 negative pairs per example).
        sampling: str. `"balanced"`: examples take turns as the anchor, each
            with one positive and one negative partner, so half the pairs
            are positive (SetFit's sampling); `"random"`: uniformly drawn
            pairs of distinct examples (positives as rare as the classes make
            them).
        seed: int. The same seed gives the same pairs.

    Returns:
        int64 array `(num_pairs, 3)`: rows `(i, j, same_class)`.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if sampling not in ("balanced", "random"):
        raise ValueError(f"Unknown pair sampling for make_pairs. Expected 'balanced' or "
                         f"'random'. Received: sampling={sampling!r}")
    num_pairs = PAIRS_PER_EXAMPLE * n if num_pairs is None else int(num_pairs)
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive int. Received: {num_pairs!r}")
    rng = np.random.default_rng(seed)
    if sampling == "random":
        i = rng.integers(0, n, num_pairs)
        j = (i + rng.integers(1, n, num_pairs)) % n
        return np.stack([i, j, labels[i] == labels[j]], axis=1).astype(np.int64)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    rows = []
    anchors = np.concatenate([rng.permutation(n) for _ in range(math.ceil(num_pairs / (2 * n)))])
    for k in range(num_pairs):
        i = int(anchors[(k // 2) % len(anchors)])
        if k % 2 == 0:
            same = by_class[labels[i]]
            j = int(rng.choice(same[same != i]))
        else:
            j = int(rng.choice(np.flatnonzero(labels != labels[i])))
        rows.append((i, j, int(labels[i] == labels[j])))
    return np.asarray(rows, dtype=np.int64)


def _in_batch_steps(labels, batch_size, steps, rng):
    """Class-balanced batches of example indices; every pair inside one is trained on."""
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    cursors = [0] * len(by_class)
    for step in range(steps):
        chosen = []
        # Classes take turns, starting at a different class each step.
        k = step
        while len(chosen) < min(batch_size, len(labels)):
            c = k % len(by_class)
            pool = by_class[c]
            if cursors[c] >= len(pool):
                by_class[c] = pool = rng.permutation(pool)
                cursors[c] = 0
            index = int(pool[cursors[c]])
            cursors[c] += 1
            if index not in chosen:
                chosen.append(index)
            k += 1
        chosen = np.asarray(chosen)
        a, b = np.triu_indices(len(chosen), k=1)
        yield chosen, a, b, (labels[chosen][a] == labels[chosen][b]).astype(np.float32)


def _pair_steps(pairs, batch_size, epochs, rng):
    """Batches of explicit pairs: the texts they touch (each once) and local pair indices."""
    for _ in range(epochs):
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), batch_size):
            batch = pairs[order[start:start + batch_size]]
            chosen, local = np.unique(batch[:, :2], return_inverse=True)
            local = local.reshape(-1, 2)
            yield chosen, local[:, 0], local[:, 1], batch[:, 2].astype(np.float32)


def contrastive_loss(cosines: tf.Tensor, same: tf.Tensor, loss: str = "cosent") -> tf.Tensor:
    """The loss of pair cosine similarities given same-class flags.

    `"cosent"`: `log(1 + sum exp(s * (cos_neg - cos_pos)))` over every
    (positive, negative) pair combination, s = 20 (CoSENT: only the ranking of
    positive pairs above negative ones matters). `"cosine_mse"`: the mean
    squared error between the cosine and 1 (same class) or 0 (SetFit's
    `CosineSimilarityLoss`).
    """
    cosines = tf.cast(cosines, tf.float32)
    same = tf.cast(same, tf.float32)
    if loss == "cosine_mse":
        return tf.reduce_mean(tf.square(cosines - same))
    # diff[p, q] = cos[q] - cos[p], counted where p is positive and q negative.
    diff = COSENT_SCALE * (cosines[None, :] - cosines[:, None])
    counted = same[:, None] * (1.0 - same[None, :])
    diff = diff - (1.0 - counted) * 1e12
    return tf.reduce_logsumexp(tf.concat([[0.0], tf.reshape(diff, [-1])], axis=0))


def _tokenize(task, texts, batch_size=256):
    """Preprocesses raw texts once into a dict of NumPy arrays (the backbone's inputs)."""
    parts = [task.preprocess(np.asarray(texts[i:i + batch_size], dtype=object).astype(str))
             for i in range(0, len(texts), batch_size)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def _gather(tokens, rows):
    return trim_to_longest({k: tf.constant(v[rows]) for k, v in tokens.items()})


# One traced inference function per task (a new tf.function per call would retrace).
_EMBEDDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _embedder(task):
    step = _EMBEDDERS.get(task)
    if step is None:
        encoder = feature_model(task)
        spec = {k: tf.TensorSpec([None, None], v.dtype, name=k)
                for k, v in encoder.input.items()} if isinstance(encoder.input, dict) else None

        @tf.function(input_signature=[spec] if spec else None, autograph=False,
                     reduce_retracing=True)
        def step(inputs):
            return encoder(inputs, training=False)

        step.dim = int(encoder.output.shape[-1])
        _EMBEDDERS[task] = step
    return step


def embed(task: Task, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """The task's pooled features of `texts` (backbone in inference mode), `(n, dim)`.

    Texts are batched by length and each batch is cut to its longest text,
    so short texts cost less than the preprocessor's full sequence length.
    """
    step = _embedder(task)
    texts = np.asarray(list(texts), dtype=object)
    if not len(texts):
        return np.zeros((0, step.dim), np.float32)
    tokens = _tokenize(task, texts)
    lengths = (tokens["padding_mask"].sum(axis=1) if "padding_mask" in tokens
               else np.zeros(len(texts)))
    order = np.argsort(-lengths, kind="stable")
    out = np.empty((len(texts), step.dim), np.float32)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        out[rows] = np.asarray(step(_gather(tokens, rows)))
    return out


def _prompts(class_names, template, verbalizer):
    """The label prompts: texts and their class ids, every template with every label word."""
    templates = as_templates(template, LabelTemplate)
    verbalizer = as_verbalizer(
        verbalizer or {name: [name.replace("_", " ")] for name in class_names}, class_names)
    texts, ids = [], []
    for i, name in enumerate(class_names):
        for t in templates:
            for word in verbalizer.words(name):
                texts.append(t.format(word))
                ids.append(i)
    return np.asarray(texts, dtype=object), np.asarray(ids, dtype=np.int64)


def _prompt_kernel(task, prompts, prompt_ids, num_classes):
    """Each class's label-prompt embedding: the normalised mean of its prompts'."""
    vectors = embed(task, prompts)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    rows = []
    for i in range(num_classes):
        mean = vectors[prompt_ids == i].mean(axis=0)
        rows.append(mean / max(np.linalg.norm(mean), 1e-12))
    return np.stack(rows).astype(np.float32)


def _as_task(model, num_classes, class_names, freeze, sequence_length):
    if isinstance(model, Task):
        if model.preprocessor is None or model.task != "multiclass":
            missing = " without a preprocessor" if model.preprocessor is None else ""
            raise ValueError("few_shot_fit needs a multiclass text task (raw strings in). "
                             f"Received: a {model.task} task{missing}.")
        if model.num_classes != num_classes:
            raise ValueError(
                f"The task's head has {model.num_classes} classes but the labels name "
                f"{num_classes}: {class_names}. Build the task with num_classes={num_classes}."
            )
        model.freeze(freeze)
        return model
    if isinstance(model, str):
        model = load_backbone(model, sequence_length=sequence_length)
    if not isinstance(model, Backbone):
        raise TypeError("few_shot_fit takes a tfft.Task, a tfft.Backbone or a backbone spec "
                        f"such as 'minilm'. Received: {type(model).__name__}")
    if model.info.modality != "text" or model.preprocessor is None:
        raise ValueError(f"few_shot_fit needs a text backbone with a preprocessor. Received: "
                         f"{model!r}")
    return build_model(model, task="multiclass", num_classes=num_classes, freeze=freeze,
                       pooling="mean", dropout=0.0, normalize_features=True, compile=False,
                       class_names=class_names)


def few_shot_fit(
    model: Task | Backbone | str,
    texts: Sequence[str],
    labels: Sequence[Any],
    class_names: Sequence[str] | None = None,
    freeze: str | FreezePolicy = "full",
    loss: str = "cosent",
    pair_sampling: str = "in_batch",
    num_pairs: int | None = None,
    epochs: int = 1,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    interpolation: float = 0.5,
    template: str | Sequence[str] | None = None,
    verbalizer: Mapping[str, Sequence[str]] | None = None,
    head_epochs: int = 200,
    head_learning_rate: float = 1e-2,
    sequence_length: int = 128,
    seed: int = 0,
    verbose: int = 1,
) -> Task:
    """Fine-tunes a sentence encoder on a few labelled texts per class, contrastively.

    The encoder (mean-pooled, L2-normalised embeddings) trains on pairs of
    the examples so that same-class pairs have higher cosine similarity than
    other pairs; then the head (a softmax layer on the embeddings) is fitted
    on the tuned embeddings of the examples. `epochs=0` skips the encoder
    stage: a probe on the frozen embeddings.

    The encoder is tuned in place: a `Backbone` object passed in ends up
    with the tuned weights (as with `build_model` and `fit`); load a fresh
    one to keep the original.

    Args:
        model: `tfft.Task` (multiclass, text), `tfft.Backbone` or a spec
            such as `"minilm"`. A backbone gets a new task: masked-mean
            pooling, L2-normalised, and a softmax head without dropout.
        texts: list of str. The labelled texts (at least 2 per class).
        labels: list of int class ids or of class names.
        class_names: list of str. The classes in id order. Defaults to the
            task's, else the sorted distinct label names.
        freeze: str or FreezePolicy for the encoder stage: `"full"`,
            `"top_k:K"`, `"lora:R"` ... (see `tfft.parse_freeze`). Defaults
            to `"full"`.
        loss: str. `"cosent"` (ranking of positive above negative pairs; the
            default) or `"cosine_mse"` (squared error of the cosine to 1 or 0,
            SetFit's loss).
        pair_sampling: str. `"in_batch"` (default): each step takes a
            class-balanced batch of `batch_size` examples and trains on every
            pair inside it (each text encoded once per step: the cheapest per
            pair); `"balanced"`: explicit pairs from `make_pairs`, half
            positive; `"random"`: explicit uniformly drawn pairs. Explicit
            pairs train `batch_size` pairs per step.
        num_pairs: int. Pairs per epoch. Defaults to `40 * len(texts)`
            (SetFit's 20 positive and 20 negative per example), and with
            `"in_batch"` sampling at least 20 steps' worth.
        epochs: int. Passes over the pairs. 0 fits the head only. Defaults
            to 1.
        batch_size: int. Examples (`"in_batch"`) or pairs per step.
            Defaults to 16.
        learning_rate: float. AdamW learning rate of the encoder (linear
            warmup over the first 10% of steps, then constant). Defaults to
            1e-4.
        interpolation: float in [0, 1]. How much of the encoder stage's
            weight change is kept: each trained weight ends at
            `pretrained + interpolation * (tuned - pretrained)` before the
            head is fitted. Averaging the pretrained and the tuned weights
            (weight-space ensembling, WiSE-FT: Wortsman et al., 2022) keeps
            what the pretrained encoder, and the label prompts, knew that a
            handful of examples would otherwise overwrite. 1.0 keeps the
            tuned weights (SetFit's recipe). Defaults to 0.5.
        template: str or list of str with `{label}`, e.g. `"This article is
            about {label}."`. Given, the label prompts start the head from
            the zero-shot classifier (prompt embeddings as its weights) and
            join the training examples of their class. Defaults to None
            (SetFit without prompts).
        verbalizer: dict `{class: [words]}` for the prompts. Defaults to
            each class name.
        head_epochs: int. Full-batch Adam steps of the head. Defaults to 200.
        head_learning_rate: float. The head's Adam learning rate. Defaults
            to 1e-2.
        sequence_length: int. Tokens per text when `model` is a spec.
            Defaults to 128.
        seed: int. Pairs, batches, dropout and the head's initial weights
            follow it: the same seed on a freshly loaded backbone gives the
            same task (a backbone used before has advanced its dropout
            seed state). Defaults to 0.
        verbose: int. 1 shows a progress bar of the encoder's steps.

    Returns:
        The fitted `tfft.Task`, compiled, with `freeze` as its freeze
        policy (`"feature_extraction"` when `epochs=0`).

    Example:

    >>> task = tfft.few_shot_fit("minilm", texts, labels, class_names=names,
    ...                          template="This article is about {label}.")
    >>> task.predict(["Shares fell after the results."]).argmax(-1)
    """
    if class_names is None and isinstance(model, Task):
        class_names = model.class_names
    texts, ids, class_names = check_few_shot_data(texts, labels, class_names)
    if loss not in CONTRASTIVE_LOSSES:
        raise ValueError(f"Unknown contrastive loss. Expected one of {list(CONTRASTIVE_LOSSES)}."
                         f" Received: loss={loss!r}")
    if pair_sampling not in PAIR_SAMPLINGS:
        raise ValueError(f"Unknown pair sampling. Expected one of {list(PAIR_SAMPLINGS)}. "
                         f"Received: pair_sampling={pair_sampling!r}")
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 2),
                             ("head_epochs", head_epochs, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}. Received: {name}={value!r}")
    if (isinstance(interpolation, bool) or not isinstance(interpolation, (int, float))
            or not 0.0 <= interpolation <= 1.0):
        raise ValueError("interpolation must be a number in [0, 1] (1 keeps the tuned "
                         f"encoder). Received: interpolation={interpolation!r}")
    if num_pairs is not None and (not isinstance(num_pairs, int) or num_pairs < 1):
        raise ValueError(f"num_pairs must be a positive int or None. Received: {num_pairs!r}")
    for name, value in (("learning_rate", learning_rate),
                        ("head_learning_rate", head_learning_rate)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number. Received: {value!r}")
    # Without an encoder stage nothing in the encoder trains: record that.
    policy = parse_freeze(freeze) if epochs > 0 else FeatureExtraction()
    keras.utils.set_random_seed(seed)
    task = _as_task(model, len(class_names), class_names, policy, sequence_length)

    train_texts, train_ids = texts, ids
    if template is not None:
        prompts, prompt_ids = _prompts(class_names, template, verbalizer)
        train_texts = np.concatenate([texts, prompts])
        train_ids = np.concatenate([ids, prompt_ids])

    if epochs > 0:
        _train_encoder(task, train_texts, train_ids, loss=loss, sampling=pair_sampling,
                       num_pairs=num_pairs, epochs=epochs, batch_size=batch_size,
                       learning_rate=learning_rate, interpolation=interpolation, seed=seed,
                       verbose=verbose)
    features = embed(task, train_texts)
    if template is not None:
        # The zero-shot head, from the (tuned) encoder's prompt embeddings.
        kernel = _prompt_kernel(task, prompts, prompt_ids, len(class_names))
        output = task.head.output_layer
        output.kernel.assign(kernel.T / PROMPT_TEMPERATURE)
        output.bias.assign(np.zeros(len(class_names), np.float32))
    if head_epochs:
        _fit_head(task, features, train_ids, head_epochs, head_learning_rate)
    compile_model(task, task="multiclass", num_classes=len(class_names))
    return task


def _train_encoder(task, texts, ids, loss, sampling, num_pairs, epochs, batch_size,
                   learning_rate, interpolation, seed, verbose):
    """The contrastive stage: pairs' cosine similarities, trained through the freeze policy."""
    encoder = feature_model(task)
    variables = task.backbone_layer.trainable_weights
    if not variables:
        raise ValueError(
            f"The freeze policy {task.freeze_policy!r} leaves no encoder weight trainable; "
            "use 'full', 'top_k:K' or 'lora:R' (or epochs=0 for a probe on frozen embeddings)."
        )
    tokens = _tokenize(task, texts)
    rng = np.random.default_rng(seed)
    pairs_per_epoch = PAIRS_PER_EXAMPLE * len(ids) if num_pairs is None else num_pairs
    if sampling == "in_batch":
        size = min(batch_size, len(ids))
        per_step = size * (size - 1) // 2
        per_epoch = math.ceil(pairs_per_epoch / per_step)
        if num_pairs is None:
            per_epoch = max(per_epoch, MIN_DEFAULT_STEPS)
        total = epochs * per_epoch
        steps = _in_batch_steps(ids, size, total, rng)
    else:
        pairs = make_pairs(ids, pairs_per_epoch, sampling, seed)
        total = epochs * math.ceil(len(pairs) / batch_size)
        steps = _pair_steps(pairs, batch_size, epochs, rng)
    # Linear warmup over the first 10% of the steps, then constant (alpha=1: no decay).
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, total), alpha=1.0, warmup_target=learning_rate,
        warmup_steps=max(1, total // 10))
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.01)
    optimizer.build(variables)
    spec = {k: tf.TensorSpec([None, None], tf.as_dtype(v.dtype), name=k)
            for k, v in tokens.items()}
    vector = tf.TensorSpec([None], tf.int64)

    @tf.function(input_signature=[spec, vector, vector, tf.TensorSpec([None], tf.float32)],
                 autograph=False)
    def step(inputs, a, b, same):
        with tf.GradientTape() as tape:
            emb = tf.math.l2_normalize(tf.cast(encoder(inputs, training=True), tf.float32),
                                       axis=-1)
            cosines = tf.reduce_sum(tf.gather(emb, a) * tf.gather(emb, b), axis=-1)
            value = contrastive_loss(cosines, same, loss)
        grads = tape.gradient(value, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return value

    logger.info("Few-shot encoder stage: %d steps (%s pairs, %s loss, %d trainable weights "
                "tensors, %s)", total, sampling, loss, len(variables), task.freeze_policy)
    progress = keras.utils.Progbar(total, verbose=verbose, stateful_metrics=["loss"])
    pretrained = [variable.numpy() for variable in variables] if interpolation < 1 else None
    started = time.time()
    for index, (rows, a, b, same) in enumerate(steps):
        value = step(_gather(tokens, rows), tf.constant(a, tf.int64), tf.constant(b, tf.int64),
                     tf.constant(same))
        value = float(value)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"The contrastive loss became {value} at step {index + 1}; try a lower "
                f"learning_rate (received {learning_rate:g}).")
        progress.update(index + 1, [("loss", value)])
    logger.info("Few-shot encoder stage took %.1f s", time.time() - started)
    if pretrained is not None:
        for variable, start in zip(variables, pretrained, strict=True):
            variable.assign(start + interpolation * (variable.numpy() - start))


def _fit_head(task, features, ids, epochs, learning_rate):
    """The head on the embeddings: full-batch Adam from its current weights."""
    head = head_model(task)
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss=keras.losses.SparseCategoricalCrossentropy())
    head.fit(features, ids, batch_size=len(ids), epochs=epochs, shuffle=False, verbose=0)


__all__ = [
    "CONTRASTIVE_LOSSES", "PAIR_SAMPLINGS", "check_few_shot_data", "contrastive_loss", "embed",
    "few_shot_fit", "make_pairs", "sample_shots",
]
