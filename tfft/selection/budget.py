"""The time budget of a bake-off: cost estimates, time accounting and skipped rows.

Before a candidate runs, its cost is estimated: first from catalog metadata
(`prior_estimate`), then from a timed batch through the loaded backbone
(`seconds_per_example`). A candidate that would not fit in the time left is
recorded as a skipped row with the reason, never run. Fine-tunes get a step
plan that fits (`plan_fine_tune`) and a callback that stops them at the
planned step count or the time limit (`StepTimeLimit`).
"""

import dataclasses
import math
import time

import keras
import tensorflow as tf

from tfft.selection.candidates import TFIDF, catalog_info, resolve_spec
from tfft.selection.leaderboard import LeaderboardRow
from tfft.selection.recommend import estimate_seconds

# Seconds to load a backbone and trace its first forward pass, before any
# measurement exists (MiniLM loads in about 5 s on 2 cores, tracing adds 2-5).
LOAD_OVERHEAD_SECONDS = 10.0
# Extra seconds to trace a training step and a fresh prediction function.
TRACE_OVERHEAD_SECONDS = 10.0
TIMING_EXAMPLES = 16
MIN_FINE_TUNE_STEPS = 5
MAX_FINE_TUNE_EPOCHS = 2


class Budget:
    """The wall-clock account of one `select()` run and the rows it produced.

    Every candidate ends as one row: finished (`record`) with the seconds it
    took, or skipped (`skip`) with the reason.

    Args:
        seconds: float. The whole run's budget.
        metric: str. The metric the rows report.
        verbose: bool. Print progress lines.
    """

    def __init__(self, seconds: float, metric: str, verbose: bool = False):
        self.seconds = seconds
        self.metric = metric
        self.verbose = verbose
        self.started = time.perf_counter()
        self.rows = []
        self.models = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def over(self, estimate: float | None) -> str | None:
        """The reason `estimate` seconds do not fit in the time left, or None."""
        left = self.remaining()
        if estimate is not None and estimate > left:
            return (f"estimated {estimate:.0f} s > {max(left, 0):.0f} s left of the "
                    f"{self.seconds:.0f} s budget")
        return None

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"[tfft select {self.elapsed():6.1f}s] {message}", flush=True)

    def skip(self, candidate, reason: str, estimate: float | None = None) -> None:
        """Records `candidate` as skipped, with the reason."""
        self.log(f"skip {candidate.name}: {reason}")
        self.rows.append(LeaderboardRow(
            candidate=candidate.name, method=candidate.method,
            backbone_spec=spec_text(candidate), metric=self.metric, status="skipped",
            reason=reason, estimated_seconds=_round(estimate),
            load_kwargs=dict(candidate.load_kwargs),
        ))

    def record(self, candidate, value: float, seconds: float, params: int | None,
               per_second: float | None, reason: str, estimate: float | None,
               model=None) -> None:
        """Records a finished candidate: its score, seconds, size and predictor."""
        self.log(f"done {candidate.name}: {self.metric}={value:.4f} in {seconds:.1f} s")
        self.rows.append(LeaderboardRow(
            candidate=candidate.name, method=candidate.method,
            backbone_spec=spec_text(candidate), metric=self.metric, value=round(value, 6),
            train_seconds=round(seconds, 3), params=None if params is None else int(params),
            inference_per_second=_round(per_second), estimated_seconds=_round(estimate),
            status="ok", reason=reason, load_kwargs=dict(candidate.load_kwargs),
        ))
        if model is not None:
            self.models[candidate.name] = model


def prior_estimate(candidate, num_train: int, num_val: int,
                   sequence_length: int) -> float | None:
    """A candidate's cost in seconds before anything is loaded (None when unknown).

    From the candidate's own `estimated_seconds`, else the catalog's
    parameter count through `tfft.selection.estimate_seconds` (CPU figures).
    """
    if candidate.estimated_seconds is not None:
        return float(candidate.estimated_seconds)
    if candidate.method == TFIDF:
        return 1.0 + 0.002 * (num_train + num_val)
    if candidate.method == "custom":
        return None
    info = catalog_info(candidate.backbone_spec)
    if info is None or not info.params:
        return None

    def cost(method, n):
        return estimate_seconds(info.params, info.modality, method, n, "cpu", sequence_length)

    if candidate.method == "zero_shot":
        return LOAD_OVERHEAD_SECONDS + cost("zero_shot", num_val)
    probe = LOAD_OVERHEAD_SECONDS + cost("feature_extraction", num_train + num_val)
    if not candidate.is_fine_tune:
        return probe
    kind = "full" if candidate.method == "full" else "top_k:2"
    one_epoch = cost(kind, num_train) / 3.0
    return (probe + LOAD_OVERHEAD_SECONDS + TRACE_OVERHEAD_SECONDS + one_epoch
            + cost("feature_extraction", num_val))


def seconds_per_example(features: keras.Model, dataset: tf.data.Dataset) -> float:
    """Seconds per example of preprocessing + `features`, from one timed batch.

    A Keras `predict` call carries seconds of fixed overhead (iterator,
    tracing), so the batch runs through a traced function instead and the
    overhead is counted separately (`TRACE_OVERHEAD_SECONDS`).
    """
    batch = next(iter(dataset))
    t0 = time.perf_counter()
    batch = next(iter(dataset))  # preprocessing, traced already
    prep_seconds = time.perf_counter() - t0
    forward = tf.function(lambda inputs: features(inputs, training=False))
    forward(batch)  # traces
    t1 = time.perf_counter()
    forward(batch)
    seconds = prep_seconds + time.perf_counter() - t1
    count = int(tf.nest.flatten(batch)[0].shape[0])
    return seconds / count


def probe_estimate(per_example: float, to_compute: int) -> float:
    """Seconds of a linear probe that embeds `to_compute` examples (2 s on a cache hit)."""
    return per_example * to_compute + TRACE_OVERHEAD_SECONDS if to_compute else 2.0


@dataclasses.dataclass(frozen=True)
class FineTunePlan:
    """How long a fine-tune may train: `steps` planned, `seconds` at most."""

    steps: int
    seconds: float
    step_seconds: float


def plan_fine_tune(budget: Budget, method: str, per_example: float, batch_size: int,
                   num_train: int, num_val: int, load_seconds: float,
                   fine_tune_seconds: float | None) -> tuple[FineTunePlan | None, str | None]:
    """The step plan of a fine-tune that fits the time left, or the reason none does.

    A training step is costed as 2 (`top_k`) or 4 (`full`) forward passes of
    a batch at the measured `per_example` seconds; the plan leaves time for
    a fresh load, tracing and the validation pass, runs at least
    `MIN_FINE_TUNE_STEPS` and at most `MAX_FINE_TUNE_EPOCHS` epochs.

    Returns:
        `(plan, None)` or `(None, reason)`.
    """
    passes = 4.0 if method == "full" else 2.0
    step_seconds = per_example * batch_size * passes
    eval_seconds = per_example * num_val
    overhead = load_seconds + TRACE_OVERHEAD_SECONDS + eval_seconds
    left = budget.remaining()
    allowed = left - overhead
    if fine_tune_seconds is not None:
        allowed = min(allowed, fine_tune_seconds)
    needed = MIN_FINE_TUNE_STEPS * step_seconds
    if fine_tune_seconds is not None and fine_tune_seconds < needed:
        return None, (
            f"fine_tune_seconds={fine_tune_seconds:g} allows fewer than "
            f"{MIN_FINE_TUNE_STEPS} steps at {step_seconds:.1f} s each (measured "
            f"{1 / per_example:.1f} examples/s forward)"
        )
    if allowed < needed:
        return None, (
            f"fine-tuning needs >= {overhead + needed:.0f} s (load, trace, "
            f"{MIN_FINE_TUNE_STEPS} steps at {step_seconds:.1f} s, val pass) but "
            f"{max(left, 0):.0f} s are left of the {budget.seconds:.0f} s budget"
        )
    steps_per_epoch = math.ceil(num_train / batch_size)
    steps = min(MAX_FINE_TUNE_EPOCHS * steps_per_epoch,
                max(MIN_FINE_TUNE_STEPS, int(allowed / step_seconds)))
    return FineTunePlan(steps=steps, seconds=allowed, step_seconds=step_seconds), None


class StepTimeLimit(keras.callbacks.Callback):
    """Stops training after `max_steps` steps or `seconds` seconds, whichever first.

    `stopped_by` tells which: `"plan"` (the step count), `"time"`, or
    `"data"` when the data ran out first; `steps` counts the steps run.

    Args:
        seconds: float. Training time limit.
        max_steps: int. Planned step count.
    """

    def __init__(self, seconds: float, max_steps: int):
        super().__init__()
        self.seconds = seconds
        self.max_steps = max_steps
        self.steps = 0
        self.started = None
        self.stopped_by = "data"

    def on_train_begin(self, logs=None):
        if self.started is None:
            self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps >= self.max_steps:
            self.stopped_by = "plan"
            self.model.stop_training = True
        elif time.perf_counter() - self.started > self.seconds:
            self.stopped_by = "time"
            self.model.stop_training = True


def spec_text(candidate) -> str | None:
    """The backbone spec a row reports: the resolved spec string, or the Backbone's."""
    spec = candidate.backbone_spec
    if spec is None:
        return None
    if isinstance(spec, str):
        return resolve_spec(spec)
    info = getattr(spec, "info", None)
    return info.spec if info is not None else getattr(spec, "name", str(spec))


def _round(value, digits=3):
    return None if value is None else round(float(value), digits)
