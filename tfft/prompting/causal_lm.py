"""Zero- and few-shot classification by scoring label words with a causal LM.

Each class's label words are scored by their log-likelihood as the
continuation of the prompt (no free generation). Works with any KerasHub
`CausalLM` whose backbone has a `token_embedding` used for the LM head
(GPT-2, Llama, Mistral, ...), including the offline SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.backbones.causal_lm import (  # noqa: F401  (public here too)
    CAUSAL_LM_SPEC_FORMS,
    SMOLLM2_SPECS,
    load_causal_lm,
    load_smollm2,
)
from tfft.prompting.encoder import _as_texts, softmax
from tfft.prompting.templates import (
    PromptTemplate,
    TemplateLike,
    VerbalizerLike,
    as_templates,
    as_verbalizer,
)
from tfft.utils.checks import check_int


def _tokenizer_of(causal_lm, tokenizer=None):
    if tokenizer is not None:
        return tokenizer
    preprocessor = getattr(causal_lm, "preprocessor", None)
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "The causal LM has no preprocessor with a tokenizer; pass tokenizer=... "
            "(a keras_hub tokenizer)."
        )
    return tokenizer


def _max_length_of(causal_lm):
    backbone = getattr(causal_lm, "backbone", None)
    for attr in ("max_sequence_length",):
        value = getattr(backbone, attr, None)
        if value:
            return int(value)
    preprocessor = getattr(causal_lm, "preprocessor", None)
    value = getattr(preprocessor, "sequence_length", None)
    return int(value) if value else None


_FORWARD_CACHE = weakref.WeakKeyDictionary()
_SIGNATURE = [
    tf.TensorSpec((None, None), tf.int32, name="token_ids"),
    tf.TensorSpec((None, None), tf.bool, name="padding_mask"),
]


def _compiled_forward(causal_lm):
    """One traced forward per model (any batch and length), shared by all scorers."""
    if causal_lm not in _FORWARD_CACHE:
        backbone = getattr(causal_lm, "backbone", None)

        @tf.function(input_signature=_SIGNATURE)
        def hidden(token_ids, padding_mask):
            out = backbone({"token_ids": token_ids, "padding_mask": padding_mask},
                           training=False)
            return out["sequence_output"] if isinstance(out, dict) else out

        @tf.function(input_signature=_SIGNATURE)
        def logits(token_ids, padding_mask):
            return causal_lm({"token_ids": token_ids, "padding_mask": padding_mask},
                             training=False)

        _FORWARD_CACHE[causal_lm] = (hidden, logits)
    return _FORWARD_CACHE[causal_lm]


class CausalLMScorer:
    """Log-likelihood of continuations given prompts, batched, for a KerasHub CausalLM.

    Prompts and continuations are token id lists. Rows that share the same
    model input (a prompt followed by single-token continuations, say) run once.

    Args:
        causal_lm: `keras_hub.models.CausalLM`.
        batch_size: int. Rows per forward pass. Defaults to 8.
        bucket: int. Row lengths are padded up to a multiple of this, so
            fewer distinct shapes reach the runtime. Defaults to 16.
        max_length: int. Padded rows never exceed this. Defaults to None.
    """

    def __init__(
        self, causal_lm: keras.Model, batch_size: int = 8, bucket: int = 16,
        max_length: int | None = None,
    ) -> None:
        self.causal_lm = causal_lm
        self.max_length = max_length
        self.batch_size = int(batch_size)
        self.bucket = int(bucket)
        backbone = getattr(causal_lm, "backbone", None)
        embedding = getattr(backbone, "token_embedding", None)
        # Computing logits only at the scored positions saves a (batch, seq,
        # vocab) tensor; models with extra logit processing use their own call.
        import keras_hub

        self._use_reverse_embedding = (
            isinstance(causal_lm, keras_hub.models.CausalLM)
            and embedding is not None
            and not hasattr(causal_lm, "final_logit_soft_cap")
        )

        self._hidden_fn, self._logits_fn = _compiled_forward(causal_lm)

    def _log_probs_at(self, token_ids, padding_mask, rows, positions, targets):
        """Returns log p(targets | prefix) at (rows, positions) of one padded batch."""
        token_ids = tf.constant(token_ids, tf.int32)
        padding_mask = tf.constant(padding_mask, tf.bool)
        index = tf.constant(np.stack([rows, positions], axis=1), tf.int32)
        if self._use_reverse_embedding:
            hidden = self._hidden_fn(token_ids, padding_mask)
            picked = tf.gather_nd(hidden, index)
            logits = self.causal_lm.backbone.token_embedding(picked, reverse=True)
        else:
            logits = tf.gather_nd(self._logits_fn(token_ids, padding_mask), index)
        logits = tf.cast(logits, tf.float32)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        return tf.gather(log_probs, tf.constant(targets, tf.int32), batch_dims=1).numpy()

    def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[np.ndarray]:
        """Scores `(prompt_ids, continuation_ids)` pairs.

        Returns:
            A list with one float32 array of per-token log-probabilities per pair.
        """
        rows = {}  # model input tuple -> row id
        inputs = []
        requests = []  # (pair index, row id, first position)
        for i, (prompt, continuation) in enumerate(pairs):
            if len(prompt) == 0 or len(continuation) == 0:
                raise ValueError(
                    "Scoring needs a non-empty prompt and continuation. Received: "
                    f"{len(prompt)} prompt tokens, {len(continuation)} continuation tokens "
                    f"(pair {i})."
                )
            model_input = tuple(prompt) + tuple(continuation[:-1])
            row = rows.get(model_input)
            if row is None:
                row = rows[model_input] = len(inputs)
                inputs.append(model_input)
            requests.append((i, row, len(prompt) - 1))
        by_row = {}
        for i, row, start in requests:
            by_row.setdefault(row, []).append((i, start))
        results = [None] * len(pairs)
        order = sorted(range(len(inputs)), key=lambda r: len(inputs[r]))
        for b in range(0, len(order), self.batch_size):
            batch_rows = order[b:b + self.batch_size]
            longest = max(len(inputs[r]) for r in batch_rows)
            width = -(-longest // self.bucket) * self.bucket
            if self.max_length:
                width = max(longest, min(width, self.max_length))
            token_ids = np.zeros((len(batch_rows), width), np.int32)
            mask = np.zeros((len(batch_rows), width), bool)
            gather_rows, gather_pos, gather_tok, spans = [], [], [], []
            for j, r in enumerate(batch_rows):
                token_ids[j, :len(inputs[r])] = inputs[r]
                mask[j, :len(inputs[r])] = True
                for i, start in by_row[r]:
                    continuation = pairs[i][1]
                    first = len(gather_tok)
                    for k, token in enumerate(continuation):
                        gather_rows.append(j)
                        gather_pos.append(start + k)
                        gather_tok.append(token)
                    spans.append((i, first, len(gather_tok)))
            log_probs = self._log_probs_at(
                token_ids, mask, np.array(gather_rows), np.array(gather_pos),
                np.array(gather_tok),
            )
            for i, first, last in spans:
                results[i] = log_probs[first:last].astype(np.float32)
        return results


def _select_examples(examples, class_names, k, seed):
    """Picks k examples balanced over classes (as even as k allows), shuffled."""
    if isinstance(examples, tuple) and len(examples) == 2:
        texts, labels = examples
    elif hasattr(examples, "x") and hasattr(examples, "y"):
        texts, labels = examples.x, examples.y
        names = getattr(examples, "class_names", None)
        if names is not None:
            labels = [names[int(y)] for y in labels]
    else:
        raise TypeError(
            "examples must be a (texts, labels) tuple or a tfft.data.LabeledData. "
            f"Received: {type(examples).__name__}"
        )
    texts = [str(t) for t in texts]
    labels = [class_names[int(y)] if isinstance(y, (int, np.integer)) else str(y)
              for y in labels]
    if len(texts) != len(labels):
        raise ValueError(
            f"examples: {len(texts)} texts but {len(labels)} labels; they must match."
        )
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise ValueError(
            f"examples have labels {unknown} that are not classes. Expected labels in "
            f"{class_names} (or their integer ids)."
        )
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation([i for i, y in enumerate(labels) if y == c]))
             for c in class_names}
    chosen = []
    class_cycle = list(rng.permutation(len(class_names)))
    while len(chosen) < k:
        progressed = False
        for c in class_cycle:
            pool = pools[class_names[c]]
            if pool and len(chosen) < k:
                chosen.append(int(pool.pop()))
                progressed = True
        if not progressed:
            raise ValueError(
                f"k_shot={k} but only {len(chosen)} examples are available. "
                "Pass more examples or a smaller k_shot."
            )
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    return [(texts[i], labels[i]) for i in chosen]


CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


class CausalLMClassifier:
    """Classifies text by the log-likelihood a causal LM gives each label word.

    For every text, class and label word, the prompt (k in-context examples,
    then the template filled with the text up to `{label}`) is followed by the
    label word; its token log-probabilities are summed (or averaged), a class
    scores the mean over its words, and templates in an ensemble are averaged.
    Nothing is generated.

    Args:
        causal_lm: `keras_hub.models.CausalLM` or spec for `load_causal_lm`
            (e.g. `"offline:smollm2"`).
        template: str, `PromptTemplate`, list or `TemplateEnsemble`.
        verbalizer: `Verbalizer`, dict `{class: [words]}` or list of class names.
        k_shot: int. In-context examples, balanced over classes. Defaults to 0.
        examples: `(texts, labels)` or `LabeledData` to draw the k examples from.
        class_names: list of str. Output class order; defaults to the verbalizer's.
        seed: int. Seed for the example selection. Defaults to 0.
        reduction: `"sum"` or `"mean"` of a label word's token log-probs.
            Defaults to `"sum"`.
        max_input_tokens: int. Truncates each input to this many tokens
            (in-context examples too). Defaults to None (no truncation).
        max_length: int. Longest prompt + label the model may see; longer ones
            raise ValueError before any scoring. Defaults to the backbone's
            `max_sequence_length` (also the cap), else the preprocessor's
            `sequence_length`.
        example_separator: str. Between in-context examples. Defaults to `"\\n\\n"`.
        temperature: float. Softmax temperature for `predict_proba`. Defaults to 1.
        batch_size: int. Defaults to 8.
        tokenizer: a keras_hub tokenizer, when `causal_lm` has no preprocessor.
        calibrate: bool. Contextual calibration (Zhao et al., 2021): subtract
            the class scores of content-free inputs (`"N/A"`, `""`, `"[MASK]"`)
            under the same prompt, removing the model's prior for each label
            word. Defaults to False.

    Example:

    >>> clf = CausalLMClassifier(
    ...     "offline:smollm2", "Review: {input}\\nSentiment: {label}",
    ...     {"fresh": ["positive"], "rotten": ["negative"]})
    >>> clf.predict(["A delight from start to finish."])
    ['fresh']
    """

    def __init__(
        self,
        causal_lm: str | keras.Model,
        template: TemplateLike,
        verbalizer: VerbalizerLike | None = None,
        k_shot: int = 0,
        examples: Any = None,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        reduction: str = "sum",
        max_input_tokens: int | None = None,
        max_length: int | None = None,
        example_separator: str = "\n\n",
        temperature: float = 1.0,
        batch_size: int = 8,
        tokenizer: Any = None,
        calibrate: bool = False,
    ) -> None:
        self._cache = {}  # text -> token ids
        self.causal_lm = load_causal_lm(causal_lm)
        self.tokenizer = _tokenizer_of(self.causal_lm, tokenizer)
        self.verbalizer = as_verbalizer(verbalizer, class_names)
        self.class_names = self.verbalizer.class_names
        self.templates = as_templates(template, PromptTemplate)
        if reduction not in ("sum", "mean"):
            raise ValueError(
                f"Unknown reduction. Expected 'sum' or 'mean'. Received: reduction={reduction!r}"
            )
        self.reduction = reduction
        self.k_shot = check_int("k_shot", k_shot, minimum=0)
        if self.k_shot and examples is None:
            raise ValueError(
                f"k_shot={k_shot} needs examples=(texts, labels) to draw in-context "
                "examples from."
            )
        self.seed = seed
        self.max_input_tokens = max_input_tokens
        limit = _max_length_of(self.causal_lm)
        self.max_length = int(max_length) if max_length else limit
        if limit and getattr(getattr(self.causal_lm, "backbone", None), "max_sequence_length",
                             None):
            # Learnt position embeddings end at the backbone's limit.
            self.max_length = min(self.max_length, limit)
        self.example_separator = example_separator
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature!r}")
        self.temperature = float(temperature)
        self.verbalizer.check_tokens(self._tokenize)
        self.shots = (
            _select_examples(examples, self.class_names, self.k_shot, seed)
            if self.k_shot else []
        )
        self.scorer = CausalLMScorer(
            self.causal_lm, batch_size=batch_size, max_length=self.max_length
        )
        self.calibrate = bool(calibrate)
        self._content_free = None

    def _tokenize(self, text):
        if text == "":
            return []
        if text not in self._cache:
            ids = np.asarray(self.tokenizer(text)).reshape(-1).astype(np.int64).tolist()
            self._cache[text] = ids
        return self._cache[text]

    def _input_ids(self, text):
        ids = self._tokenize(text)
        if self.max_input_tokens is not None:
            ids = ids[: int(self.max_input_tokens)]
        return ids

    def _prompt_ids(self, template, text):
        """Token ids of shots + the template up to the label slot."""
        head, between, label_prefix = template.split()
        ids = []
        for shot_text, shot_label in self.shots:
            word = self.verbalizer.words(shot_label)[0]
            ids += self._tokenize(head) + self._input_ids(shot_text)
            ids += self._tokenize(between + label_prefix + word)
            ids += self._tokenize(self.example_separator)
        ids += self._tokenize(head) + self._input_ids(text) + self._tokenize(between)
        if not ids:
            start = getattr(self.tokenizer, "start_token_id", None)
            if start is None:
                raise ValueError(
                    "The prompt is empty and the tokenizer has no start token to "
                    "condition on. Put some text in the template."
                )
            ids = [int(start)]
        return ids, label_prefix

    def _pairs(self, texts):
        pairs, index = [], []
        for n, text in enumerate(texts):
            for t, template in enumerate(self.templates):
                prompt, label_prefix = self._prompt_ids(template, text)
                for c, name in enumerate(self.class_names):
                    for word in self.verbalizer.words(name):
                        continuation = self._tokenize(label_prefix + word)
                        total = len(prompt) + len(continuation)
                        if self.max_length is not None and total > self.max_length:
                            raise ValueError(
                                f"Text {n}: the prompt plus label {word!r} is {total} tokens, "
                                f"but the model accepts at most {self.max_length}. Pass "
                                "max_input_tokens=... to truncate inputs, use fewer shots "
                                f"(k_shot={self.k_shot}), or a shorter template."
                            )
                        pairs.append((prompt, continuation))
                        index.append((n, t, c))
        return pairs, index

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Class scores (mean over templates and words of label log-likelihoods).

        With `calibrate=True`, minus the same scores for content-free inputs.
        """
        scores = self._raw_scores(texts)
        if self.calibrate:
            if self._content_free is None:
                self._content_free = self._raw_scores(CONTENT_FREE_INPUTS).mean(axis=0)
            scores = scores - self._content_free
        return scores

    def _raw_scores(self, texts):
        texts = _as_texts(texts)
        pairs, index = self._pairs(texts)  # validates every length before scoring
        token_log_probs = self.scorer.score(pairs)
        totals = np.zeros((len(texts), len(self.templates), len(self.class_names)))
        counts = np.zeros_like(totals)
        for (n, t, c), lp in zip(index, token_log_probs, strict=True):
            totals[n, t, c] += lp.sum() if self.reduction == "sum" else lp.mean()
            counts[n, t, c] += 1
        return (totals / counts).mean(axis=1)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return softmax(self.scores(texts), self.temperature)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """Returns the predicted class names."""
        return [self.class_names[i] for i in self.scores(texts).argmax(axis=-1)]
