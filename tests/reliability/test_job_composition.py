"""The main job composes the library's engine: fit_cached for the head, fine_tune after.

Spies on `tfft.jobs.finetune`'s `fit_cached` and `fine_tune` (they still run) show
which engine each stage went through and with what; the weights and the feature cache
show what the user gets from it.
"""

import os

import numpy as np
import pytest

import tfft
from tfft.adapt.freeze import TopK
from tfft.jobs import finetune as job

SETTINGS = dict(max_examples=200, head_epochs=2, epochs=1, sequence_length=32,
                batch_size=16, unfreeze_top=1, export_dir=None, verbose=0)


@pytest.fixture
def spies(monkeypatch, tmp_path):
    monkeypatch.setenv("TFFT_FEATURE_CACHE_DIR", str(tmp_path / "features"))
    calls = {"fit_cached": [], "fine_tune": []}
    for name in calls:
        real = getattr(job, name)

        def spy(model, *args, _real=real, _name=name, **kwargs):
            before = {w.path: np.array(w.numpy()) for w in model.weights}
            result = _real(model, *args, **kwargs)
            after = {w.path: np.array(w.numpy()) for w in model.weights}
            calls[_name].append({"kwargs": kwargs, "before": before, "after": after})
            return result

        monkeypatch.setattr(job, name, spy)
    return calls


@pytest.mark.slow
def test_head_through_fit_cached_then_top_blocks_through_fine_tune(small_preset, tmp_path,
                                                                  spies):
    first = tfft.run_job(backbone=f"keras_hub:{small_preset}", run_dir=str(tmp_path / "a"),
                         **SETTINGS)
    assert [s["name"] for s in first["stages"]] == ["head", "fine_tune"]
    assert len(spies["fit_cached"]) == 1 and len(spies["fine_tune"]) == 1
    head_call, tune_call = spies["fit_cached"][0], spies["fine_tune"][0]
    assert head_call["kwargs"]["epochs"] == 2
    kwargs = tune_call["kwargs"]
    assert kwargs["freeze_epochs"] == 0 and kwargs["epochs"] == 1
    assert kwargs["unfreeze"] == TopK(1)
    assert kwargs["fine_tune_lr"] == job.JobConfig().learning_rate
    assert kwargs["backup_dir"] == os.path.join(str(tmp_path / "a"), "backup")

    # Stage 1 moved only the head; stage 2 the top block and the head, never the block
    # below it or the embeddings (bitwise).
    def moved(call):
        return {p for p in call["before"]
                if not np.array_equal(call["before"][p], call["after"][p])}

    assert moved(head_call) and all(p.startswith("head/") for p in moved(head_call))
    tuned = moved(tune_call)
    assert any(p.startswith("transformer_layer_1/") for p in tuned)
    assert any(p.startswith("head/") for p in tuned)
    assert not any(p.startswith(("transformer_layer_0/", "token_embedding",
                                 "position_embedding", "segment_embedding")) for p in tuned)
    assert first["stages"][1]["trainable_params"] > first["stages"][0]["trainable_params"]

    # Same settings, new run directory: the head stage reuses the cached features and,
    # trained on the same bits, follows the same history.
    second = tfft.run_job(backbone=f"keras_hub:{small_preset}", run_dir=str(tmp_path / "b"),
                          **dict(SETTINGS, epochs=0))
    assert first["stages"][0]["feature_cache_hit"] is False
    assert second["stages"][0]["feature_cache_hit"] is True
    assert second["stages"][0]["history"] == first["stages"][0]["history"]
    assert len(spies["fit_cached"]) == 2 and len(spies["fine_tune"]) == 1


@pytest.mark.slow
def test_without_the_cache_the_head_stage_is_fine_tunes_head_stage(small_preset, tmp_path,
                                                                   spies):
    report = tfft.run_job(backbone=f"keras_hub:{small_preset}", run_dir=str(tmp_path / "a"),
                          feature_cache=False, **dict(SETTINGS, epochs=0, head_epochs=1))
    assert spies["fit_cached"] == []
    [call] = spies["fine_tune"]
    assert call["kwargs"]["epochs"] == 0 and call["kwargs"]["freeze_epochs"] == 1
    assert call["kwargs"]["lr"] == job.JobConfig().head_learning_rate
    [stage] = report["stages"]
    assert stage["feature_cache_hit"] is False and stage["feature_seconds"] == 0.0
    assert len(stage["history"]["loss"]) == 1 and np.isfinite(stage["history"]["loss"]).all()
