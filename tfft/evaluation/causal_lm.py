"""Evaluating a causal LM whose completions are labels: exact match, accuracy, macro F1.

`evaluate_completions(task, prompts, labels)` generates greedily, reads each
completion as a class (the label it equals or starts with, case and
surrounding spaces ignored) and builds tfft's scikit-learn
`EvaluationReport`, so a generative classifier compares directly with
encoder classifiers and zero-/few-shot prompting. Held-out perplexity is
`task.perplexity(data)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfft.evaluation.metrics import EvaluationReport, report_from_predictions
from tfft.models.causal_lm import CausalLMTask

UNPARSED = "(unparsed)"


def completion_to_class(text: str, class_names: Sequence[str]) -> int | None:
    """The class a completion names: equal to, or starting with, a class name; else None."""
    norm = text.strip().lower()
    names = [name.strip().lower() for name in class_names]
    if norm in names:
        return names.index(norm)
    # Longest names first, so "not good" wins over "not".
    for i in sorted(range(len(names)), key=lambda i: -len(names[i])):
        if names[i] and norm.startswith(names[i]):
            return i
    return None


def evaluate_completions(task: CausalLMTask, prompts: Sequence[str], labels: Sequence[str],
                         class_names: Sequence[str] | None = None,
                         max_new_tokens: int | None = None,
                         batch_size: int = 8) -> EvaluationReport:
    """Generates a completion per prompt and scores it as a class label.

    Args:
        task: `tfft.CausalLMTask`.
        prompts: list of str.
        labels: list of str. The expected completions (class names).
        class_names: list of str. Defaults to the sorted distinct labels.
        max_new_tokens: int. Defaults to the longest label's tokens + 2.
        batch_size: int. Defaults to 8.

    Returns:
        An `EvaluationReport` whose metrics add `exact_match` (completion
        equal to the label, spaces ignored) and `unparsed` (completions that
        name no class; counted wrong, as the class `"(unparsed)"`).
    """
    prompts, labels = list(prompts), [str(label) for label in labels]
    if len(prompts) != len(labels):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels; they must match.")
    if not prompts:
        raise ValueError("Cannot evaluate on an empty set: no prompts.")
    names = list(class_names) if class_names is not None else sorted(
        {label.strip() for label in labels})
    unknown = sorted({label.strip() for label in labels} - {n.strip() for n in names})
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among class_names {names}.")
    if max_new_tokens is None:
        max_new_tokens = max(len(ids) for ids in task._tokenize_many(names)) + 2
    completions = task.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    y_true = np.array([completion_to_class(label, names) for label in labels])
    predicted = [completion_to_class(text, names) for text in completions]
    unparsed = sum(p is None for p in predicted)
    report_names = names + ([UNPARSED] if unparsed else [])
    y_pred = np.array([len(names) if p is None else p for p in predicted])
    report = report_from_predictions(y_true, y_pred, task="multiclass",
                                     class_names=report_names)
    report.metrics["exact_match"] = float(np.mean(
        [c.strip() == label.strip() for c, label in zip(completions, labels, strict=True)]))
    report.metrics["unparsed"] = int(unparsed)
    return report
