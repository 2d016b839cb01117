"""The rules `tfft.selection.recommend` applies, kept as data.

Two kinds of rule, each a `Rule` with conditions (`when`) and an output (`then`):

- `METHOD_RULES` pick how to adapt a backbone from the labels and the amount
  of data. They are tried in order; the first whose conditions all hold wins.
- `BACKBONE_RULES` filter and score each backbone of `tfft.list_backbones()`
  for the request. Every rule whose conditions hold applies: `exclude` drops
  the backbone, `score` adds to its score, `downgrade` steps its method down
  the `METHOD_LADDER` (full -> top_k:2 -> feature_extraction) while the
  estimated training time exceeds the budget.

Each rule's `reason` is a format string over the request and the backbone
(`{num_examples}`, `{params_m}`, `{max_params_m}`, ...): the one-line reason a
recommendation carries cites the rule's name and these numbers.

The cost model below is a rough one from figures measured on a 2-core CPU
(see ASSETS.md): all-MiniLM-L6-v2 (22.7M parameters, 128 tokens) runs 24.9
examples/s frozen and 6.2 examples/s in full fine-tuning; EfficientNet-Lite0
(3.4M, 224 px) about 60 examples/s frozen. Throughput scales inversely with
parameters; a GPU is taken as 20x and a TPU as 40x a 2-core CPU.
"""

import dataclasses

# Examples per second of a forward pass on a 2-core CPU, per million parameters
# (so a model of P million parameters runs about RATE / P examples/s).
CPU_FORWARD_RATE = {"text": 24.9 * 22.7, "image": 60.0 * 3.4}
# Training costs this many forward passes per example (backward included).
TRAIN_COST = {"feature_extraction": 1.0, "top_k:2": 2.0, "full": 4.0, "zero_shot": 1.0}
# Epochs a method's estimate assumes: one backbone pass for feature
# extraction (the head then trains on cached features), three otherwise.
TRAIN_EPOCHS = {"feature_extraction": 1, "top_k:2": 3, "full": 3, "zero_shot": 1}
SPEEDUP = {"cpu": 1.0, "gpu": 20.0, "tpu": 40.0}
# Parameters a device runs per millisecond of single-example latency budget.
PARAMS_PER_MS = {"cpu": 0.6e6, "gpu": 10e6, "tpu": 20e6}
CPU_MAX_PARAMS = 30e6
METHOD_LADDER = ("full", "top_k:2", "feature_extraction")
METHODS = ("zero_shot", "feature_extraction", "top_k:2", "full")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One selection rule: conditions and what follows when they all hold.

    Args:
        name: str. Short name cited in reasons, e.g. `"small_data"`.
        kind: str. `"method"` or `"backbone"`.
        when: dict. Conditions, all of which must hold (see `CONDITIONS`).
        then: dict. Output: `{"method": ...}` for method rules;
            `{"exclude": True}`, `{"score": float}` or `{"downgrade": True}`
            for backbone rules.
        reason: str. A format string for the one-line reason.
    """

    name: str
    kind: str
    when: dict
    then: dict
    reason: str

    def __post_init__(self):
        if self.kind not in ("method", "backbone"):
            raise ValueError(
                f"Rule kind must be 'method' or 'backbone'. Received: kind={self.kind!r}"
            )
        unknown = set(self.when) - set(CONDITIONS)
        if unknown:
            raise ValueError(
                f"Unknown rule condition(s) {sorted(unknown)} in rule {self.name!r}. "
                f"Expected keys of {sorted(CONDITIONS)}."
            )
        outputs = {"method"} if self.kind == "method" else {"exclude", "score", "downgrade"}
        if not self.then or set(self.then) - outputs:
            raise ValueError(
                f"A {self.kind} rule's output must use {sorted(outputs)}. "
                f"Received: then={self.then!r} in rule {self.name!r}"
            )
        if self.kind == "method" and self.then["method"] not in METHODS:
            raise ValueError(
                f"Unknown method {self.then['method']!r} in rule {self.name!r}. "
                f"Expected one of {list(METHODS)}."
            )

    def matches(self, context):
        """Whether every condition holds for `context` (a dict of facts)."""
        return all(CONDITIONS[key](context, value) for key, value in self.when.items())

    def explain(self, context):
        return f"[{self.name}] " + self.reason.format(**context)

    def to_dict(self):
        return dataclasses.asdict(self)


def _params_known(context):
    return context.get("params", 0) > 0


# Condition name -> predicate(context, value). The context holds the request
# (task, modality, num_examples, labels_available, compute, budget_seconds,
# latency_ms) and, for backbone rules, the backbone's facts (params, offline,
# sentence_encoder, method, estimated_seconds).
CONDITIONS = {
    "labels_available": lambda c, v: c["labels_available"] == v,
    "min_examples": lambda c, v: c["num_examples"] >= v,
    "max_examples": lambda c, v: c["num_examples"] < v,
    "tasks": lambda c, v: c["task"] in v,
    "modalities": lambda c, v: c["modality"] in v,
    "compute": lambda c, v: c["compute"] in v,
    "has_latency_budget": lambda c, v: (c["latency_ms"] is not None) == v,
    "has_time_budget": lambda c, v: (c["budget_seconds"] is not None) == v,
    "methods": lambda c, v: c["method"] in v,
    "offline": lambda c, v: c["offline"] == v,
    "sentence_encoder": lambda c, v: c["sentence_encoder"] == v,
    "params_known": lambda c, v: _params_known(c) == v,
    "params_above": lambda c, v: _params_known(c) and c["params"] > v,
    "params_above_latency_cap": lambda c, v: (
        _params_known(c) and (c["params"] > c["max_params_latency"]) == v
    ),
    "over_time_budget": lambda c, v: (c["estimated_seconds"] > c["budget_seconds"]) == v,
}

METHOD_RULES = [
    Rule("no_labels", "method", {"labels_available": False}, {"method": "zero_shot"},
         "no labels: zero-shot prompts (class names as label words), nothing to train"),
    Rule("no_examples", "method", {"max_examples": 1}, {"method": "zero_shot"},
         "num_examples={num_examples}: zero-shot prompts, nothing to train"),
    Rule("small_data", "method", {"max_examples": 1000}, {"method": "feature_extraction"},
         "num_examples={num_examples} < 1,000: frozen backbone + linear head on cached "
         "features (fine-tuning this few examples overfits)"),
    Rule("medium_data", "method", {"max_examples": 20000}, {"method": "top_k:2"},
         "1,000 <= num_examples={num_examples} < 20,000: fine-tune the top 2 blocks"),
    Rule("large_data_cpu", "method", {"compute": ("cpu",)}, {"method": "top_k:2"},
         "num_examples={num_examples} >= 20,000 but compute=cpu: top 2 blocks only "
         "(full fine-tuning runs ~4x slower than a forward pass)"),
    Rule("large_data", "method", {}, {"method": "full"},
         "num_examples={num_examples} >= 20,000 on {compute}: full fine-tuning"),
]

BACKBONE_RULES = [
    Rule("zero_shot_needs_sentence_encoder", "backbone",
         {"methods": ("zero_shot",), "sentence_encoder": False}, {"exclude": True},
         "zero-shot text scoring needs a sentence-embedding model"),
    Rule("zero_shot_text_only", "backbone",
         {"methods": ("zero_shot",), "modalities": ("image",)}, {"exclude": True},
         "no image backbone in the catalog does zero-shot (CLIP weights are not bundled)"),
    Rule("latency_cap", "backbone",
         {"has_latency_budget": True, "params_above_latency_cap": True}, {"exclude": True},
         "{params_m:.1f}M params > {max_params_latency_m:.1f}M allowed by "
         "latency_ms={latency_ms} on {compute}"),
    Rule("latency_unknown_size", "backbone",
         {"has_latency_budget": True, "params_known": False}, {"exclude": True},
         "parameter count unknown, cannot check latency_ms={latency_ms}"),
    Rule("over_budget", "backbone",
         {"has_time_budget": True, "over_time_budget": True}, {"downgrade": True},
         "{method} estimated {estimated_seconds:.0f} s > budget {budget_seconds:.0f} s"),
    Rule("cpu_prefers_small", "backbone",
         {"compute": ("cpu",), "params_above": CPU_MAX_PARAMS}, {"score": -2.0},
         "{params_m:.1f}M params > 30M on cpu: ranked down"),
    Rule("offline_weights", "backbone", {"offline": True}, {"score": 0.5},
         "pretrained weights load offline"),
    Rule("sentence_encoder_features", "backbone",
         {"sentence_encoder": True, "methods": ("feature_extraction", "zero_shot")},
         {"score": 0.5}, "sentence-embedding model: strong pooled features"),
]
