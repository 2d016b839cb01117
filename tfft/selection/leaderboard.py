"""The result of a bake-off: one row per candidate, saved as CSV, JSON and a plot."""

import csv
import dataclasses
import json
import math
import os

from tfft.models import build_model
from tfft.utils.files import write_json_atomic

FREEZE_METHODS = ("feature_extraction", "full")
STATUSES = ("ok", "skipped")


def _is_freeze(method):
    return method in FREEZE_METHODS or str(method).startswith("top_k:")


@dataclasses.dataclass
class LeaderboardRow:
    """One candidate's outcome.

    Args:
        candidate: str. The candidate's name, e.g. `"minilm:feature_extraction"`.
        method: str. `"feature_extraction"`, `"top_k:2"`, `"full"`,
            `"zero_shot"`, `"tfidf_logreg"` or `"custom"`.
        backbone_spec: str. Spec for `tfft.build_model`, None for non-deep ones.
        metric: str. Name of the metric in `value`.
        value: float. The metric on the validation data (None when skipped).
        train_seconds: float. Wall time the candidate took (loading, features,
            training, evaluation).
        params: int. Parameters of the predictor.
        inference_per_second: float. Validation examples predicted per second.
        estimated_seconds: float. The cost estimated before running it.
        status: str. `"ok"` or `"skipped"`.
        reason: str. What ran, or why it was skipped.
        load_kwargs: dict. Backbone load options (e.g. `{"weights": None}`).
    """

    candidate: str
    method: str
    backbone_spec: str = None
    metric: str = "macro_f1"
    value: float = None
    train_seconds: float = None
    params: int = None
    inference_per_second: float = None
    estimated_seconds: float = None
    status: str = "ok"
    reason: str = ""
    load_kwargs: dict = dataclasses.field(default_factory=dict)

    @property
    def freeze(self):
        """The `build_model` freeze policy, or None when this is not a backbone run."""
        return self.method if _is_freeze(self.method) else None

    @property
    def ok(self):
        return self.status == "ok"

    def to_dict(self):
        return dataclasses.asdict(self)


COLUMNS = [f.name for f in dataclasses.fields(LeaderboardRow)]


class Leaderboard:
    """Rows of a bake-off, best first, with the winner and its trained model.

    Args:
        rows: list of `LeaderboardRow`.
        metric: str. The metric the rows are ranked by.
        budget_seconds: float. The run's time budget.
        elapsed_seconds: float. Time the run took.
        class_names: list of str. Classes of the data.
        models: dict. Candidate name -> trained predictor (not saved).
    """

    def __init__(self, rows, metric="macro_f1", budget_seconds=None, elapsed_seconds=None,
                 class_names=None, models=None):
        self.metric = metric
        self.budget_seconds = budget_seconds
        self.elapsed_seconds = elapsed_seconds
        self.class_names = list(class_names or [])
        self.models = dict(models or {})
        self.rows = sorted(rows, key=self._rank_key)

    @staticmethod
    def _rank_key(row):
        if not row.ok or row.value is None:
            return (1, 0.0, 0.0, row.candidate)
        return (0, -row.value, row.train_seconds or 0.0, row.candidate)

    def best(self, buildable=False):
        """The best finished row; with `buildable`, the best `build_model` one."""
        for row in self.rows:
            if row.ok and row.value is not None and (not buildable or row.freeze):
                return row
        return None

    @property
    def winner(self):
        """The best finished row (None when nothing ran)."""
        return self.best()

    @property
    def winner_model(self):
        """The winner's trained predictor from this run (a Keras model for
        backbone candidates, a scikit-learn pipeline or zero-shot classifier
        otherwise); None after `load`."""
        winner = self.winner
        return self.models.get(winner.candidate) if winner else None

    def build_winner(self, num_classes=None, task="multiclass", **kwargs):
        """Builds a fresh, untrained `tfft.build_model` of the best backbone row.

        Uses the best row with a freeze policy (feature extraction, top-k or
        full fine-tuning): a TF-IDF or zero-shot winner has no backbone to
        fine-tune, so the best backbone row below it is built instead.

        Args:
            num_classes: int. Defaults to the number of classes of the data.
            task: str. Defaults to `"multiclass"`.
            **kwargs: more `tfft.build_model` arguments.
        """
        row = self.best(buildable=True)
        if row is None:
            raise ValueError(
                "No finished backbone candidate to build: the leaderboard holds "
                f"{[(r.candidate, r.status) for r in self.rows]}. Run select() with at least "
                "one backbone candidate such as 'minilm:feature_extraction'."
            )
        if num_classes is None:
            if not self.class_names:
                raise ValueError("Pass num_classes: this leaderboard has no class names.")
            num_classes = len(self.class_names)
        options = {**row.load_kwargs, **kwargs}
        return build_model(row.backbone_spec, task=task, num_classes=num_classes,
                           freeze=row.freeze, **options)

    def to_dict(self):
        winner = self.winner
        return {
            "metric": self.metric,
            "budget_seconds": self.budget_seconds,
            "elapsed_seconds": self.elapsed_seconds,
            "class_names": self.class_names,
            "winner": winner.candidate if winner else None,
            "rows": [row.to_dict() for row in self.rows],
        }

    def table(self):
        """The rows as a fixed-width text table."""
        header = ["rank", "candidate", "method", self.metric, "train_s", "params", "infer/s",
                  "status", "reason"]
        lines = []
        for i, row in enumerate(self.rows, 1):
            lines.append([
                str(i) if row.ok else "-", row.candidate, row.method,
                _fmt(row.value, "{:.4f}"), _fmt(row.train_seconds, "{:.1f}"),
                _fmt(row.params, "{:,}"), _fmt(row.inference_per_second, "{:.1f}"),
                row.status, row.reason,
            ])
        widths = [max(len(header[c]), *(len(line[c]) for line in lines)) if lines
                  else len(header[c]) for c in range(len(header) - 1)]
        out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  reason"]
        for line in lines:
            cells = "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=False))
            out.append(cells + "  " + line[-1])
        return "\n".join(out)

    def __str__(self):
        return self.table()

    def __repr__(self):
        winner = self.winner
        return (f"<Leaderboard {len(self.rows)} rows, metric={self.metric}, "
                f"winner={winner.candidate if winner else None}>")

    def to_csv(self, path):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for row in self.rows:
                data = row.to_dict()
                data["load_kwargs"] = json.dumps(data["load_kwargs"], sort_keys=True)
                writer.writerow({k: "" if v is None else v for k, v in data.items()})
        return path

    def to_json(self, path):
        write_json_atomic(path, self.to_dict())
        return path

    def plot(self, path):
        """Saves a PNG of the metric against train seconds, points labelled."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        done = [r for r in self.rows if r.ok and r.value is not None]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [max(row.train_seconds or 0.0, 1e-2) for row in done]
        for i, (row, seconds) in enumerate(zip(done, xs, strict=True)):
            marker = "*" if row is self.winner else "o"
            ax.scatter([seconds], [row.value], s=120 if marker == "*" else 50, marker=marker)
            # Alternate label positions so neighbouring points stay readable.
            ax.annotate(row.candidate, (seconds, row.value), textcoords="offset points",
                        xytext=(6, (8, -14, 22, -28)[i % 4]), fontsize=8)
        if done:
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 2.0, max(xs) * 6.0)
            values = [row.value for row in done]
            pad = max(0.02, 0.1 * (max(values) - min(values)))
            ax.set_ylim(min(values) - pad, max(values) + pad)
        ax.set_xlabel("train seconds (log scale)")
        ax.set_ylabel(self.metric)
        skipped = len(self.rows) - len(done)
        ax.set_title(f"tfft select: {self.metric} vs cost"
                     + (f" ({skipped} skipped)" if skipped else ""))
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def save(self, out_dir):
        """Writes `leaderboard.csv`, `leaderboard.json` and `leaderboard.png`."""
        os.makedirs(out_dir, exist_ok=True)
        return {
            "csv": self.to_csv(os.path.join(out_dir, "leaderboard.csv")),
            "json": self.to_json(os.path.join(out_dir, "leaderboard.json")),
            "png": self.plot(os.path.join(out_dir, "leaderboard.png")),
        }

    @classmethod
    def from_dict(cls, data):
        rows = [LeaderboardRow(**row) for row in data["rows"]]
        return cls(rows, metric=data["metric"], budget_seconds=data.get("budget_seconds"),
                   elapsed_seconds=data.get("elapsed_seconds"),
                   class_names=data.get("class_names"))

    @classmethod
    def load(cls, path):
        """Reads a leaderboard written by `to_json` (without trained models)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _fmt(value, pattern):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return pattern.format(value)
