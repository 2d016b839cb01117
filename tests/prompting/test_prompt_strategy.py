"""The prompt and soft-prompt methods through build helpers and the main job (tfft.run_job)."""

import numpy as np
import pytest

import tfft
from tfft.prompting import ZeroShotEncoderClassifier, build_zero_shot_model


@pytest.mark.slow
def test_zero_shot_model_equals_the_encoder_classifier_and_beats_majority(minilm, bbc):
    texts = np.asarray(bbc.x[::45]).astype(str)
    labels = bbc.y[::45]
    model = build_zero_shot_model(minilm, bbc.class_names)
    probs = model.predict(minilm.preprocessor(texts), verbose=0)
    reference = ZeroShotEncoderClassifier(
        minilm, verbalizer={c: [c] for c in bbc.class_names}, class_names=bbc.class_names,
    ).predict_proba(texts)
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    assert tfft.trainable_summary(model)["trainable"] == 384 * 5 + 5
    accuracy = float(np.mean(probs.argmax(-1) == labels))
    print("zero-shot accuracy", accuracy)
    assert accuracy > 0.23 + 0.3


@pytest.mark.slow
def test_job_prompt_method_evaluates_and_exports(tmp_path):
    report = tfft.run_job(method="prompt", max_examples=200, sequence_length=64,
                           run_dir=str(tmp_path / "run"),
                           export_dir=str(tmp_path / "saved"), verbose=0)
    assert [s["name"] for s in report["stages"]] == ["prompt"]
    assert report["stages"][0]["trainable_params"] == 0
    assert report["test"]["macro_f1"] > 0.5
    assert report["export_path"].endswith("1")


@pytest.mark.slow
def test_job_soft_prompt_method_trains_only_prompts(tmp_path):
    # The deprecated key `strategy` still selects the method, with a warning.
    with pytest.warns(DeprecationWarning, match="'strategy' is deprecated: use 'method'"):
        report = tfft.run_job(strategy="soft_prompt", max_examples=120, sequence_length=32,
                              batch_size=8, epochs=1, prompt_tokens=4,
                              run_dir=str(tmp_path / "run"), export_dir=None, verbose=0)
    assert report["config"]["method"] == "soft_prompt" and "strategy" not in report["config"]
    stage = report["stages"][0]
    assert stage["name"] == "soft_prompt"
    assert stage["trainable_params"] == 4 * 384 + 384 * 5 + 5
    assert np.isfinite(stage["history"]["loss"]).all()
    model = report["model"]
    probs = model.predict(report["preprocessor"](np.array(["Shares fell."])), verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # Only the prompt and the head trained: every backbone weight still equals the
    # pretrained MiniLM's, loaded afresh.
    pretrained = {w.path: w for w in tfft.load_backbone("minilm", sequence_length=32).model.weights}
    shared = [w for w in model.weights if w.path in pretrained]
    assert len(shared) >= 100, [w.path for w in model.weights]
    for weight in shared:
        np.testing.assert_array_equal(weight.numpy(), pretrained[weight.path].numpy(),
                                      err_msg=weight.path)
    trained = {w.path.split("/")[0] for w in model.weights if w.path not in pretrained}
    assert trained == {"soft_prompt", "head"}, trained
