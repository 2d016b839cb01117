"""recommend(): each rule fires when it should; ranking is deterministic; bad input errors."""

import pytest

import tfft  # noqa: F401  selects the TensorFlow backend first
from tfft.backbones import BackboneInfo
from tfft.selection import recommend, rules
from tfft.selection.recommend import estimate_seconds

MINILM = "keras_hub:all_minilm_l6_v2"


def info(name, params, modality="text", offline=False, description=""):
    return BackboneInfo(name=name, source="keras_hub", modality=modality,
                        spec=f"keras_hub:{name}", params=params, offline=offline,
                        description=description)


CATALOG = [
    info("tiny", 4_000_000),
    info("small", 20_000_000),
    info("base", 110_000_000),
    info("minilm_sentence", 22_700_000, offline=True, description="sentence embeddings"),
    info("cnn", 3_000_000, modality="image"),
]


def methods(recs):
    return {r.backbone_spec: r.method for r in recs}


@pytest.mark.parametrize("num_examples, labels, compute, expected, rule", [
    (500, False, "cpu", "zero_shot", "no_labels"),
    (0, True, "cpu", "zero_shot", "no_examples"),
    (1, True, "cpu", "feature_extraction", "small_data"),
    (999, True, "gpu", "feature_extraction", "small_data"),
    (1000, True, "gpu", "top_k:2", "medium_data"),
    (19_999, True, "gpu", "top_k:2", "medium_data"),
    (20_000, True, "gpu", "full", "large_data"),
    (50_000, True, "tpu", "full", "large_data"),
    (50_000, True, "cpu", "top_k:2", "large_data_cpu"),
])
def test_method_rules_fire_on_their_thresholds(num_examples, labels, compute, expected, rule):
    recs = recommend("multiclass", "text", num_examples, compute=compute,
                     labels_available=labels, backbones=CATALOG, limit=None)
    assert recs and all(r.method == expected for r in recs)
    assert all(r.rules[0] == rule and r.reason.startswith(f"[{rule}]") for r in recs)
    # The reason cites the number the rule looked at.
    assert str(num_examples) in recs[0].reason or not labels


def test_zero_shot_keeps_only_sentence_encoders():
    recs = recommend("multiclass", "text", 0, backbones=CATALOG, limit=None)
    assert [r.backbone_spec for r in recs] == ["keras_hub:minilm_sentence"]
    assert "sentence_encoder_features" in recs[0].rules


def test_zero_shot_for_images_or_regression_is_refused():
    with pytest.raises(ValueError, match=r"No image backbone fits.*zero-shot"):
        recommend("multiclass", "image", 0, backbones=CATALOG)
    with pytest.raises(ValueError, match=r"Zero-shot prompting .* supports tasks"):
        recommend("regression", "text", 0, backbones=CATALOG)


def test_cpu_ranks_large_backbones_down_and_gpu_does_not():
    cpu = recommend("multiclass", "text", 5000, compute="cpu", backbones=CATALOG, limit=None)
    gpu = recommend("multiclass", "text", 5000, compute="gpu", backbones=CATALOG, limit=None)
    assert cpu[-1].backbone_spec == "keras_hub:base"
    assert "cpu_prefers_small" in cpu[-1].rules and "110.0M params > 30M" in cpu[-1].reason
    assert gpu[0].backbone_spec == "keras_hub:base"
    assert not any("cpu_prefers_small" in r.rules for r in gpu)


def test_latency_budget_filters_by_params():
    # 10 ms on a CPU allows 10 * 0.6M = 6M parameters.
    recs = recommend("multiclass", "text", 5000, compute="cpu", latency_ms=10,
                     backbones=CATALOG, limit=None)
    assert [r.backbone_spec for r in recs] == ["keras_hub:tiny"]
    more = recommend("multiclass", "text", 5000, compute="gpu", latency_ms=10,
                     backbones=CATALOG, limit=None)
    # A GPU runs 10M params per ms: 100M allowed, so only the 110M one goes.
    assert set(methods(more)) == {"keras_hub:tiny", "keras_hub:small",
                                     "keras_hub:minilm_sentence"}
    with pytest.raises(ValueError, match=r"latency_ms=1.*0\.6M allowed"):
        recommend("multiclass", "text", 5000, compute="cpu", latency_ms=1, backbones=CATALOG)


def test_time_budget_steps_methods_down_then_excludes():
    # 5,000 examples with a 60 s budget on the cost model: top_k:2 does not fit.
    recs = recommend("multiclass", "text", 5000, compute=60.0, backbones=CATALOG, limit=None)
    by_spec = {r.backbone_spec: r for r in recs}
    for rec in recs:
        assert rec.estimated_seconds <= 60.0
        assert "over_budget" in rec.rules or rec.method == "top_k:2"
    assert by_spec["keras_hub:tiny"].method in ("top_k:2", "feature_extraction")
    assert "keras_hub:base" not in by_spec  # even its feature pass exceeds 60 s
    small = by_spec.get("keras_hub:small")
    assert small is None or small.method == "feature_extraction"
    assert estimate_seconds(110e6, "text", "feature_extraction", 5000) > 60.0


def test_ranking_is_deterministic_with_ties_broken_by_spec():
    twins = [info("b_twin", 10_000_000), info("a_twin", 10_000_000)]
    first = recommend("multiclass", "text", 300, backbones=twins, limit=None)
    again = recommend("multiclass", "text", 300, backbones=list(reversed(twins)), limit=None)
    assert [r.backbone_spec for r in first] == ["keras_hub:a_twin", "keras_hub:b_twin"]
    assert first == again
    assert first[0].score == first[1].score


def test_offline_bonus_and_limit():
    recs = recommend("multiclass", "text", 300, compute="cpu", backbones=CATALOG, limit=2)
    assert len(recs) == 2
    assert recs[0].backbone_spec == "keras_hub:minilm_sentence"
    assert {"offline_weights", "sentence_encoder_features"} <= set(recs[0].rules)
    assert recs[0].candidate == "keras_hub:minilm_sentence:feature_extraction"
    assert recs[0].freeze == "feature_extraction"


def test_real_catalog_recommends_offline_minilm_on_cpu():
    recs = recommend("multiclass", "text", 2000, compute="cpu")
    assert recs[0].backbone_spec == MINILM and recs[0].method == "top_k:2"
    assert all(r.params < 30e6 for r in recs[:4])  # the >30M ones ranked below
    images = recommend("binary", "image", 200, compute="cpu", latency_ms=10, limit=None)
    assert images and all(0 < r.params <= 6e6 for r in images)


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "ranking"}, r"Unknown task.*'multiclass'.*Received: task='ranking'"),
    ({"modality": "audio"}, r"Unknown modality.*\['text', 'image'\].*audio"),
    ({"num_examples": -1}, "num_examples must be a non-negative int"),
    ({"num_examples": 2.5}, "num_examples must be a non-negative int"),
    ({"compute": "quantum"}, r"Unknown compute.*\['cpu', 'gpu', 'tpu'\]"),
    ({"compute": -5}, "compute must be one of"),
    ({"latency_ms": 0}, "latency_ms must be a positive number"),
    ({"metric": "auc_pr"}, r"Unknown metric.*macro_f1"),
])
def test_bad_requests_raise_with_valid_values(kwargs, match):
    request = {"task": "multiclass", "modality": "text", "num_examples": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        recommend(**request, backbones=CATALOG)


def test_rules_are_validated_data():
    assert all(isinstance(r, rules.Rule) for r in rules.METHOD_RULES + rules.BACKBONE_RULES)
    assert rules.METHOD_RULES[-1].when == {}  # a catch-all ends the method rules
    assert {r.name for r in rules.METHOD_RULES} >= {"no_labels", "small_data",
                                                      "medium_data", "large_data"}
    with pytest.raises(ValueError, match="Unknown rule condition"):
        rules.Rule("x", "method", {"moon_phase": "full"}, {"method": "full"}, "")
    with pytest.raises(ValueError, match="Unknown method"):
        rules.Rule("x", "method", {}, {"method": "lora"}, "")
    with pytest.raises(ValueError, match="output must use"):
        rules.Rule("x", "backbone", {}, {"method": "full"}, "")
    assert rules.METHOD_RULES[2].to_dict()["then"] == {"method": "feature_extraction"}
