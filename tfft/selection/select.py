"""`select()`: an empirical bake-off of candidates under a time budget.

The orchestration only: check the inputs, estimate each candidate's cost,
run the cheap candidates first, add the finalists' fine-tunes, and rank the
rows. The runners live in `tfft.selection.runners`, the budget model
(estimates, time accounting, skipped rows) in `tfft.selection.budget`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfft.data import LabeledData
from tfft.selection import metrics as M
from tfft.selection.budget import Budget, prior_estimate
from tfft.selection.candidates import Candidate, parse_candidates
from tfft.selection.leaderboard import Leaderboard
from tfft.selection.runners import Runners, RunSettings
from tfft.utils.checks import check_int, check_positive_number


def _check_data(train, val):
    for name, data in (("train", train), ("val", val)):
        if not isinstance(data, LabeledData):
            raise TypeError(
                f"select() takes tfft.data.LabeledData for {name}. "
                f"Received: {name} of type {type(data).__name__}"
            )
        if len(data) == 0:
            raise ValueError(f"select() needs examples in {name}. Received: 0 examples.")
        if np.asarray(data.y).ndim != 1:
            raise ValueError(
                f"select() ranks single-label classifiers; {name}.y must be 1D class ids. "
                f"Received shape {np.asarray(data.y).shape}."
            )
    if list(train.class_names) != list(val.class_names):
        raise ValueError(
            "train and val must share class_names. Received: "
            f"{list(train.class_names)} and {list(val.class_names)}"
        )
    if len(train.class_names) < 2 or len(np.unique(train.y)) < 2:
        raise ValueError(
            "select() needs at least 2 classes present in train. Received classes "
            f"{sorted(set(np.asarray(train.y).tolist()))} of {list(train.class_names)}."
        )
    if train.modality != val.modality:
        raise ValueError(
            f"train holds {train.modality} and val holds {val.modality}; they must match."
        )


def select(
    candidates: str | Sequence[str | Candidate],
    train: LabeledData,
    val: LabeledData,
    budget_seconds: float = 600,
    metric: str = "macro_f1",
    finalists: int = 1,
    fine_tune_seconds: float | None = None,
    out_dir: str | None = None,
    sequence_length: int = 128,
    batch_size: int = 32,
    zero_shot_template: str | None = None,
    label_words: dict[str, list[str]] | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> Leaderboard:
    """Runs an empirical bake-off of candidates within a time budget.

    Cheap candidates run first: TF-IDF + logistic regression, zero-shot
    prompts, and a linear probe (logistic regression copied into the model's
    softmax head) on each backbone's pooled features, computed once and kept
    in `tfft.training.feature_cache`. Then fine-tuning candidates (`SPEC:top_k:N`,
    `SPEC:full`) and the best `finalists` probed backbones get a short
    fine-tune (`top_k:2`) starting from their probe's head, stopped by time.
    Before each candidate its cost is estimated (from the catalog, then from
    a small timed batch) and it is skipped, with the reason, when it would
    not fit the time left. A candidate whose modality differs from the data,
    or whose weights cannot load here, is listed as skipped.

    Args:
        candidates: list of str or `Candidate`, or a comma-separated string:
            `"minilm:feature_extraction"`, `"minilm:top_k:2"`,
            `"minilm:zero_shot"`, `"tfidf_logreg"`,
            `"offline:efficientnet_lite0:feature_extraction"`, ...
        train: `tfft.data.LabeledData`. Raw strings or images, int labels.
        val: `tfft.data.LabeledData`. Scored with `metric`.
        budget_seconds: float. Wall-clock budget of the whole run.
            Defaults to 600.
        metric: str. One of `tfft.selection.metrics.METRICS`. Defaults to
            `"macro_f1"`.
        finalists: int. Probed backbones that also get a `top_k:2` fine-tune
            (0: none beyond explicit fine-tune candidates). Defaults to 1.
        fine_tune_seconds: float. Cap on each fine-tune's training time;
            defaults to the time left.
        out_dir: str. Where `leaderboard.csv`, `.json` and `.png` go (None:
            not saved).
        sequence_length: int. Tokens per text for text backbones. Defaults
            to 128.
        batch_size: int. Defaults to 32.
        zero_shot_template: str. Zero-shot prompt with `{label}`, e.g.
            `"This review is {label}."`. Defaults to the classifier's.
        label_words: dict. Zero-shot `{class_name: [words]}`; defaults to the
            class names.
        seed: int. Defaults to 0.
        verbose: bool. Print progress and the table. Defaults to True.

    Returns:
        A `Leaderboard`; `leaderboard.winner` is the best row (with
        `backbone_spec` and `freeze`), `leaderboard.winner_model` its trained
        predictor, `leaderboard.build_winner()` a fresh `build_model` of the
        best backbone row.

    Raises:
        ValueError: bad candidates or data, or a budget too small for even
            the cheapest candidate.

    Example:

    >>> data = tfft.data.load_bbc_news()
    >>> tr, va, _ = tfft.data.stratified_split(data.y, 0.3, 0.0)
    >>> board = tfft.selection.select(
    ...     ["minilm:feature_extraction", "tfidf_logreg"], data.take(tr), data.take(va),
    ...     budget_seconds=120, finalists=0)
    >>> board.winner.candidate
    """
    budget = check_positive_number("budget_seconds", budget_seconds)
    fine_tune_seconds = check_positive_number(
        "fine_tune_seconds", fine_tune_seconds, allow_none=True
    )
    M.check_metric(metric)
    check_int("finalists", finalists, minimum=0)
    _check_data(train, val)
    candidates = parse_candidates(candidates)
    account = Budget(budget, metric, verbose=verbose)
    runners = Runners(train, val, account, RunSettings(
        fine_tune_seconds=fine_tune_seconds, sequence_length=sequence_length,
        batch_size=batch_size, zero_shot_template=zero_shot_template,
        label_words=label_words, seed=seed,
    ))

    def estimate(candidate):
        return prior_estimate(candidate, len(train), len(val), sequence_length)

    estimates = {c.name: estimate(c) for c in candidates}
    runnable = [c for c in candidates if c.modality in (None, runners.modality)]
    known = [estimates[c.name] for c in runnable if estimates[c.name] is not None]
    if runnable and len(known) == len(runnable) and min(known) > budget:
        listing = ", ".join(f"{c.name} ~{estimates[c.name]:.0f} s" for c in runnable)
        raise ValueError(
            f"budget_seconds={budget:g} is too small for even one candidate on "
            f"{len(train)} train / {len(val)} val examples. Estimated costs: {listing}. "
            "Raise the budget, subsample the data, or add 'tfidf_logreg'."
        )
    order = {c.name: i for i, c in enumerate(candidates)}

    def by_cost(c):
        est = estimates[c.name]
        return (est is None, est or 0.0, order[c.name])

    for candidate in sorted([c for c in candidates if not c.is_fine_tune], key=by_cost):
        runners.run(candidate, estimates[candidate.name])
    second = sorted([c for c in candidates if c.is_fine_tune], key=by_cost)
    second += _finalists(account.rows, candidates, second, runners.states, finalists)
    for candidate in second:
        runners.run(candidate, estimates.get(candidate.name, estimate(candidate)))
    board = Leaderboard(account.rows, metric=metric, budget_seconds=budget,
                        elapsed_seconds=round(account.elapsed(), 3),
                        class_names=train.class_names, models=account.models)
    if out_dir:
        board.save(out_dir)
    if verbose:
        print(board.table(), flush=True)
    return board


def _finalists(rows, candidates, fine_tunes, states, count):
    """`top_k:2` fine-tunes of the best `count` probed backbones not fine-tuned already."""
    covered = {c.spec_key for c in fine_tunes}
    probed = sorted([r for r in rows if r.ok and r.method == "feature_extraction"],
                    key=Leaderboard._rank_key)
    by_name = {c.name: c for c in candidates}
    already = sum(c.name.endswith("(finalist)") for c in fine_tunes)
    chosen = []
    for row in probed:
        if already + len(chosen) >= count:
            break
        source = by_name[row.candidate]
        if source.spec_key in covered or not isinstance(source.backbone_spec, str):
            continue
        state = states.get(source.spec_key)
        if state is None or not state.backbone.block_names:
            continue
        base = row.candidate.rsplit(":", 1)[0]
        chosen.append(Candidate(source.backbone_spec, "top_k:2",
                                name=f"{base}:top_k:2 (finalist)",
                                load_kwargs=dict(source.load_kwargs)))
        covered.add(source.spec_key)
    return chosen
