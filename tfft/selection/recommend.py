"""`recommend()`: ranked backbone + method suggestions from catalog metadata."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from tfft.backbones import list_backbones
from tfft.backbones.base import MODALITIES, BackboneInfo
from tfft.layers import TASKS
from tfft.selection import rules as R
from tfft.selection.metrics import check_metric
from tfft.utils.checks import check_positive_number

COMPUTE = ("cpu", "gpu", "tpu")
ZERO_SHOT_TASKS = ("binary", "multiclass")


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """One suggested backbone and how to adapt it.

    Args:
        backbone_spec: str. Loads with `tfft.build_model(backbone_spec, ...)`.
        method: str. `"zero_shot"`, `"feature_extraction"`, `"top_k:2"` or
            `"full"`; the last three are `build_model` freeze policies.
        score: float. Higher ranks first: log10 of the parameter count in
            millions (capped at 2.5) plus the scores of the rules that fired.
        reason: str. One line citing the rules that fired and their numbers.
        estimated_seconds: float. Rough training time under the cost model
            in `tfft.selection.rules`.
        params: int. Backbone parameters (0 when unknown).
        rules: tuple of str. Names of the rules that fired.
    """

    backbone_spec: str
    method: str
    score: float
    reason: str
    estimated_seconds: float = 0.0
    params: int = 0
    rules: tuple = ()

    @property
    def freeze(self):
        """The `build_model` freeze policy, or None for zero-shot."""
        return None if self.method == "zero_shot" else self.method

    @property
    def candidate(self):
        """The `tfft.selection.select` candidate string for this suggestion."""
        return f"{self.backbone_spec}:{self.method}"

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["rules"] = list(self.rules)
        return data


def _is_sentence_encoder(info):
    text = f"{info.name} {info.description}".lower()
    return info.modality == "text" and ("sentence" in text or "minilm" in text)


def estimate_seconds(
    info_or_params: BackboneInfo | int | None,
    modality: str,
    method: str,
    num_examples: int,
    compute: str = "cpu",
    sequence_length: int = 128,
) -> float:
    """Rough training time of `method` on `num_examples` (see the cost model in `rules`)."""
    params = getattr(info_or_params, "params", info_or_params) or 0
    if params <= 0 or num_examples <= 0:
        return 0.0
    rate = R.CPU_FORWARD_RATE[modality] / (params / 1e6) * R.SPEEDUP[compute]
    if modality == "text":
        rate *= 128.0 / max(int(sequence_length), 1)
    passes = R.TRAIN_COST[method] * R.TRAIN_EPOCHS[method]
    return num_examples * passes / rate


def _check_request(task, modality, num_examples, compute, latency_ms):
    if task not in TASKS:
        raise ValueError(f"Unknown task. Expected one of {list(TASKS)}. Received: task={task!r}")
    if modality not in MODALITIES:
        raise ValueError(
            f"Unknown modality. Expected one of {list(MODALITIES)}. "
            f"Received: modality={modality!r}"
        )
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(
            "num_examples must be a non-negative int (0 when there are no labelled examples). "
            f"Received: num_examples={num_examples!r}"
        )
    if isinstance(compute, str):
        if compute not in COMPUTE:
            raise ValueError(
                f"Unknown compute. Expected one of {list(COMPUTE)} or a budget in seconds "
                f"(a positive number). Received: compute={compute!r}"
            )
        budget = None
    elif isinstance(compute, (int, float)) and not isinstance(compute, bool) and compute > 0:
        budget, compute = float(compute), "cpu"
    else:
        raise ValueError(
            f"compute must be one of {list(COMPUTE)} or a budget in seconds (a positive "
            f"number). Received: compute={compute!r}"
        )
    check_positive_number("latency_ms", latency_ms, allow_none=True)
    return compute, budget


def _method_for(context):
    for rule in R.METHOD_RULES:
        if rule.matches(context):
            return rule
    raise ValueError("No method rule matched; METHOD_RULES must end with a catch-all rule.")


def _apply_backbone_rules(info, context):
    """Returns `(method, score, fired, excluded_by)` for one backbone."""
    ctx = dict(context)
    params = int(info.params or 0)
    ctx.update(
        params=params, params_m=params / 1e6, offline=bool(info.offline),
        sentence_encoder=_is_sentence_encoder(info),
    )
    score = min(max(math.log10(params / 1e6), 0.0), 2.5) if params > 0 else 0.0
    method = context["method"]
    fired = []
    for rule in R.BACKBONE_RULES:
        ctx["method"] = method
        ctx["estimated_seconds"] = estimate_seconds(
            params, info.modality, method, context["num_examples"], context["compute"],
        )
        if not rule.matches(ctx):
            continue
        if rule.then.get("exclude"):
            return method, score, [*fired, (rule, rule.explain(ctx))], rule
        if rule.then.get("downgrade"):
            note = rule.explain(ctx)
            while (method in R.METHOD_LADDER[:-1]
                   and ctx["estimated_seconds"] > ctx["budget_seconds"]):
                method = R.METHOD_LADDER[R.METHOD_LADDER.index(method) + 1]
                ctx["method"] = method
                ctx["estimated_seconds"] = estimate_seconds(
                    params, info.modality, method, context["num_examples"],
                    context["compute"],
                )
            if ctx["estimated_seconds"] > ctx["budget_seconds"]:
                note += " even as feature_extraction: excluded"
                return method, score, [*fired, (rule, note)], rule
            fired.append((rule, f"{note} -> {method} ({ctx['estimated_seconds']:.0f} s)"))
            continue
        score += rule.then.get("score", 0.0)
        fired.append((rule, rule.explain(ctx)))
    return method, score, fired, None


def recommend(
    task: str,
    modality: str,
    num_examples: int,
    compute: str | float = "cpu",
    metric: str = "macro_f1",
    latency_ms: float | None = None,
    labels_available: bool = True,
    limit: int | None = 5,
    backbones: Sequence[BackboneInfo] | None = None,
) -> list[Recommendation]:
    """Ranks backbones and adaptation methods for a task from catalog metadata.

    The rules are data in `tfft.selection.rules` (`METHOD_RULES`,
    `BACKBONE_RULES`): no labels -> zero-shot prompts; fewer than 1,000
    examples -> feature extraction; up to 20,000 -> fine-tune the top 2
    blocks; more -> full fine-tuning (top 2 blocks on CPU). A CPU ranks
    backbones over 30M parameters down; a latency budget drops backbones
    larger than `latency_ms` allows; a budget in seconds steps methods
    down (and drops backbones) whose estimated training time exceeds it.
    Ties rank by spec, so the order is deterministic.

    Args:
        task: str. One of `tfft.layers.TASKS` (`"multiclass"`, `"binary"`, ...).
        modality: str. `"text"` or `"image"`.
        num_examples: int. Labelled training examples (0 for none).
        compute: str or float. `"cpu"`, `"gpu"`, `"tpu"`, or a training time
            budget in seconds (estimated on a 2-core CPU). Defaults to `"cpu"`.
        metric: str. The metric the choice will be judged by (recorded; the
            rules do not depend on it). Defaults to `"macro_f1"`.
        latency_ms: float. Per-example inference budget in milliseconds.
        labels_available: bool. False forces zero-shot prompting.
        limit: int. Most recommendations returned (None: all). Defaults to 5.
        backbones: list of `BackboneInfo`. The catalog; defaults to
            `tfft.list_backbones(modality)`.

    Returns:
        A list of `Recommendation`, best first.

    Example:

    >>> recs = tfft.selection.recommend("multiclass", "text", 2000, compute="cpu")
    >>> recs[0].backbone_spec, recs[0].method
    ('keras_hub:all_minilm_l6_v2', 'top_k:2')
    """
    compute, budget = _check_request(task, modality, num_examples, compute, latency_ms)
    check_metric(metric)
    context = {
        "task": task, "modality": modality, "num_examples": num_examples,
        "labels_available": bool(labels_available), "compute": compute,
        "budget_seconds": budget, "latency_ms": latency_ms,
        "max_params_latency": (latency_ms or 0) * R.PARAMS_PER_MS[compute],
        "max_params_latency_m": (latency_ms or 0) * R.PARAMS_PER_MS[compute] / 1e6,
    }
    method_rule = _method_for(context)
    method = method_rule.then["method"]
    if method == "zero_shot" and task not in ZERO_SHOT_TASKS:
        raise ValueError(
            f"Zero-shot prompting (no labelled examples) supports tasks {list(ZERO_SHOT_TASKS)}. "
            f"Received: task={task!r} with num_examples={num_examples}, "
            f"labels_available={labels_available}"
        )
    context["method"] = method
    catalog = list_backbones(modality) if backbones is None else [
        b for b in backbones if b.modality == modality
    ]
    results, excluded = [], []
    for info in catalog:
        final, score, fired, excluded_by = _apply_backbone_rules(info, context)
        if excluded_by is not None:
            excluded.append(f"{info.spec}: {fired[-1][1]}")
            continue
        ctx = dict(context, method=final)
        reason = "; ".join([method_rule.explain(ctx)] + [text for _, text in fired])
        results.append(Recommendation(
            backbone_spec=info.spec, method=final, score=round(score, 4), reason=reason,
            estimated_seconds=round(estimate_seconds(info, modality, final, num_examples,
                                                     compute), 1),
            params=int(info.params or 0),
            rules=tuple([method_rule.name] + [rule.name for rule, _ in fired]),
        ))
    if not results:
        shown = "; ".join(excluded[:6]) + (" ..." if len(excluded) > 6 else "")
        raise ValueError(
            f"No {modality} backbone fits the request (task={task!r}, num_examples="
            f"{num_examples}, compute={compute!r}, budget_seconds={budget}, latency_ms="
            f"{latency_ms}, labels_available={labels_available}). Excluded: {shown}"
        )
    results.sort(key=lambda r: (-r.score, r.backbone_spec))
    return results if limit is None else results[:limit]
