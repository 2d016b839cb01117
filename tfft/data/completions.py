"""Prompt/completion pairs and plain text for causal-LM fine-tuning.

`read_completions(data)` takes Python lists, dicts of columns, CSV/JSONL
files (columns `prompt` and `completion`, or `text`) and `tf.data`/TFDS
datasets of such dicts, and returns a `CompletionData`. `tokenize_completions`
turns it into next-token examples whose loss weights cover the completion
tokens only (the prompt is context, not a target), and `bucketed_dataset`
batches examples of similar length together, so padding stays small.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

PROMPT_COLUMN = "prompt"
COMPLETION_COLUMN = "completion"
TEXT_COLUMN = "text"
COLUMN_FORMS = (
    "columns 'prompt' and 'completion' (loss on the completion only), or a column "
    "'text' (loss on every token)"
)
FILE_FORMATS = (".jsonl", ".json", ".csv")


@dataclasses.dataclass(frozen=True)
class CompletionData:
    """Training text for a causal LM.

    Args:
        completions: list of str. The completions (or, when `prompts` is
            None, the plain texts).
        prompts: list of str or None. The prompts; None for plain text.
    """

    completions: list
    prompts: list | None = None

    def __post_init__(self):
        if not self.completions:
            raise ValueError("No examples: the causal-LM data is empty.")
        if self.prompts is not None and len(self.prompts) != len(self.completions):
            raise ValueError(
                f"{len(self.prompts)} prompts but {len(self.completions)} completions; "
                "each prompt needs one completion."
            )

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def is_plain_text(self) -> bool:
        return self.prompts is None


def read_completions(data: Any) -> CompletionData:
    """Reads prompt/completion pairs or plain text from many forms.

    Args:
        data: one of
            - a `CompletionData`;
            - a list of str (plain text);
            - a list of `(prompt, completion)` pairs, or of dicts with
              `prompt`/`completion` (or `text`) keys;
            - a `(prompts, completions)` tuple of two lists;
            - a dict of columns (`{"prompt": [...], "completion": [...]}` or
              `{"text": [...]}`);
            - a path to a `.jsonl`/`.json` (one object per line) or `.csv` file
              with those columns;
            - a `tf.data.Dataset` (TFDS too) of dicts with those keys.

    Returns:
        A `CompletionData`.
    """
    if isinstance(data, CompletionData):
        return data
    if isinstance(data, (str, os.PathLike)):
        return _from_rows(_read_file(os.fspath(data)), source=os.fspath(data))
    if isinstance(data, tf.data.Dataset):
        return _from_rows(_dataset_rows(data), source="the tf.data.Dataset")
    if isinstance(data, Mapping):
        return _from_columns(data, source="the dict")
    if isinstance(data, tuple) and len(data) == 2 and all(
            isinstance(part, (list, tuple, np.ndarray)) for part in data):
        return CompletionData(prompts=_strings(data[0], "prompts"),
                              completions=_strings(data[1], "completions"))
    if isinstance(data, (list, tuple, np.ndarray)):
        items = list(data)
        if not items:
            raise ValueError("No examples: the causal-LM data is empty.")
        if all(isinstance(item, str) for item in items):
            return CompletionData(completions=items)
        if all(isinstance(item, Mapping) for item in items):
            return _from_rows(items, source="the list of dicts")
        if all(isinstance(item, (list, tuple)) and len(item) == 2 for item in items):
            return CompletionData(prompts=_strings([p for p, _ in items], "prompts"),
                                  completions=_strings([c for _, c in items], "completions"))
    raise TypeError(
        "Causal-LM data must be a list of texts, a list of (prompt, completion) pairs or "
        f"dicts, a dict of columns, a .jsonl/.csv path or a tf.data.Dataset, with "
        f"{COLUMN_FORMS}. Received: {type(data).__name__}"
    )


def _strings(values, name):
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if not isinstance(value, str):
            raise TypeError(f"{name}[{i}] must be a string. Received: {value!r}")
        out.append(value)
    return out


def _from_columns(columns, source):
    keys = set(columns)
    if {PROMPT_COLUMN, COMPLETION_COLUMN} <= keys:
        return CompletionData(prompts=_strings(columns[PROMPT_COLUMN], "prompt"),
                              completions=_strings(columns[COMPLETION_COLUMN], "completion"))
    if TEXT_COLUMN in keys:
        return CompletionData(completions=_strings(columns[TEXT_COLUMN], "text"))
    if PROMPT_COLUMN in keys:
        raise ValueError(
            f"{source} has a 'prompt' column but no 'completion' column. Expected "
            f"{COLUMN_FORMS}. Received columns: {sorted(keys)}"
        )
    raise ValueError(f"{source} has no usable columns. Expected {COLUMN_FORMS}. "
                     f"Received columns: {sorted(keys)}")


def _from_rows(rows, source):
    rows = list(rows)
    if not rows:
        raise ValueError(f"No examples: {source} is empty.")
    keys = set(rows[0])
    columns = {key: [row.get(key) for row in rows] for key in keys}
    for key in (PROMPT_COLUMN, COMPLETION_COLUMN, TEXT_COLUMN):
        if key in columns and any(value is None for value in columns[key]):
            missing = next(i for i, v in enumerate(columns[key]) if v is None)
            raise ValueError(f"{source}: row {missing} has no {key!r} value.")
    return _from_columns(columns, source)


def _read_file(path):
    extension = os.path.splitext(path)[1].lower()
    if extension not in FILE_FORMATS:
        raise ValueError(
            f"Unknown causal-LM data file type. Expected one of {list(FILE_FORMATS)}. "
            f"Received: {path!r}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such causal-LM data file. Received: {path!r}")
    with open(path, encoding="utf-8", newline="") as f:
        if extension == ".csv":
            return list(csv.DictReader(f))
        rows = []
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON ({error}).") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}, line {number}: expected a JSON object with {COLUMN_FORMS}. "
                    f"Received: {type(row).__name__}"
                )
            rows.append(row)
        return rows


def _dataset_rows(dataset):
    if not isinstance(dataset.element_spec, Mapping):
        raise TypeError(
            f"A causal-LM tf.data.Dataset must yield dicts with {COLUMN_FORMS}. Received "
            f"elements of spec {dataset.element_spec}"
        )
    for element in dataset.as_numpy_iterator():
        yield {key: (value.decode("utf-8") if isinstance(value, bytes) else value)
               for key, value in element.items()}


@dataclasses.dataclass(frozen=True)
class TokenizedCompletions:
    """Next-token examples: inputs, targets and loss weights per example."""

    inputs: list
    targets: list
    weights: list
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def num_target_tokens(self) -> int:
        return int(sum(float(w.sum()) for w in self.weights))

    @property
    def num_tokens(self) -> int:
        return int(sum(len(x) for x in self.inputs))


def tokenize_completions(
    data: CompletionData,
    tokenize: Callable[[Sequence[str]], list],
    max_length: int,
    end_token_id: int | None = None,
    start_token_id: int | None = None,
) -> TokenizedCompletions:
    """Tokenises prompts and completions into next-token examples.

    Each example is `prompt + completion + [end]`, shifted by one: inputs are
    all tokens but the last, targets all but the first. The loss weight is 1
    on targets that belong to the completion (and the end token), 0 on the
    prompt, so the model learns to answer, not to repeat the question.

    Args:
        data: CompletionData.
        tokenize: callable. A list of strings -> one list of token ids each.
        max_length: int. The longest input the model takes. A prompt that
            leaves no room for a completion token is an error; a completion
            that runs past `max_length` is cut (counted in `truncated`).
        end_token_id: int. Appended after each completion. Defaults to None.
        start_token_id: int. Put before each plain text (so its first token
            is a target too). Defaults to None.
    """
    completions = tokenize(data.completions)
    prompts = tokenize(data.prompts) if data.prompts is not None else [[] for _ in completions]
    inputs, targets, weights = [], [], []
    truncated = 0
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        prompt = list(prompt)
        if data.prompts is None and start_token_id is not None:
            prompt = [int(start_token_id)]
        if data.prompts is not None and not prompt:
            raise ValueError(f"Example {i}: the prompt is empty. Use the 'text' column for "
                             "plain text.")
        if len(prompt) + 1 > max_length:
            raise ValueError(
                f"Example {i}: the prompt is {len(prompt)} tokens, but the model takes at most "
                f"{max_length} (sequence_length) and the completion needs at least one. "
                "Shorten the prompt or build the task with a larger sequence_length."
            )
        ids = prompt + list(completion) + ([int(end_token_id)] if end_token_id is not None
                                           else [])
        if len(ids) - 1 > max_length:
            ids = ids[: max_length + 1]
            truncated += 1
        if len(ids) < 2:
            continue
        ids = np.asarray(ids, np.int32)
        weight = np.zeros(len(ids) - 1, np.float32)
        # Target t is ids[t + 1]; completion tokens start at ids[len(prompt)].
        weight[max(len(prompt) - 1, 0):] = 1.0
        inputs.append(ids[:-1])
        targets.append(ids[1:])
        weights.append(weight)
    if not inputs:
        raise ValueError("No example has a token to predict; the data is empty once tokenised.")
    if truncated:
        logger.warning("%d of %d examples were longer than %d tokens and were cut.",
                       truncated, len(inputs), max_length)
    return TokenizedCompletions(inputs, targets, weights, truncated)


def bucket_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator | None
                   = None) -> list[np.ndarray]:
    """Groups example indices into batches of similar length (length bucketing).

    Examples are sorted by length (ties broken at random when `rng` is given)
    and cut into batches; the batch order is shuffled with `rng`.
    """
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
    else:
        order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padded_width(longest: int, multiple: int, limit: int) -> int:
    """`longest` rounded up to a multiple (fewer distinct shapes to trace), at most `limit`."""
    return max(longest, min(-(-longest // multiple) * multiple, limit))


def bucketed_dataset(
    examples: TokenizedCompletions,
    batch_size: int,
    max_length: int,
    shuffle: bool = False,
    seed: int | None = None,
    pad_to_multiple: int = 16,
    pad_token_id: int = 0,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of `({"token_ids", "padding_mask"}, targets, weights)` batches.

    Batches hold examples of similar length, padded to the batch's longest
    (rounded up to `pad_to_multiple`), so padding stays a small share of the
    tokens. With `shuffle`, the batch order (and ties) change every epoch.
    """
    lengths = [len(x) for x in examples.inputs]
    rng = np.random.default_rng(seed) if shuffle else None

    def generate():
        for batch in bucket_batches(lengths, batch_size, rng):
            width = padded_width(max(lengths[i] for i in batch), pad_to_multiple, max_length)
            token_ids = np.full((len(batch), width), pad_token_id, np.int32)
            targets = np.full((len(batch), width), pad_token_id, np.int32)
            mask = np.zeros((len(batch), width), bool)
            weights = np.zeros((len(batch), width), np.float32)
            for row, i in enumerate(batch):
                n = lengths[i]
                token_ids[row, :n] = examples.inputs[i]
                targets[row, :n] = examples.targets[i]
                mask[row, :n] = True
                weights[row, :n] = examples.weights[i]
            yield {"token_ids": token_ids, "padding_mask": mask}, targets, weights

    spec = tf.TensorSpec((None, None), tf.int32)
    num_batches = -(-len(lengths) // batch_size)
    dataset = tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            {"token_ids": spec, "padding_mask": tf.TensorSpec((None, None), tf.bool)},
            spec,
            tf.TensorSpec((None, None), tf.float32),
        ),
    )
    # Keras reads the number of steps per epoch from the cardinality.
    return dataset.apply(tf.data.experimental.assert_cardinality(num_batches)).prefetch(2)


def padding_fraction(lengths: Sequence[int], batch_size: int, max_length: int,
                     pad_to_multiple: int = 16) -> float:
    """Share of padded positions when batching `lengths` with `bucket_batches`."""
    lengths = list(lengths)
    total = padded = 0
    for batch in bucket_batches(lengths, batch_size):
        width = padded_width(max(lengths[i] for i in batch), pad_to_multiple, max_length)
        total += width * len(batch)
        padded += width * len(batch) - sum(lengths[i] for i in batch)
    return padded / total if total else 0.0
