"""The causal-LM task on the real SmolLM2-135M-Instruct, at tiny size (slow)."""

import os

import numpy as np
import pytest

from tfft.export.generate import export_generate_model, generate_in_fresh_process
from tfft.models.causal_lm import build_causal_lm

pytestmark = pytest.mark.slow

POSITIVE = ["a delight from start to finish", "warm, funny and wise", "a great film",
            "beautifully acted and moving", "the best comedy of the year",
            "charming and clever", "an absolute joy", "smart, fresh and touching"]
NEGATIVE = ["a dull, lifeless mess", "boring and far too long", "a terrible film",
            "badly acted and flat", "the worst comedy of the year", "tedious and clumsy",
            "an absolute chore", "stale, silly and empty"]


def pairs(positive, negative):
    return [(f"Review: {text}.\nSentiment:", " positive") for text in positive] + [
        (f"Review: {text}.\nSentiment:", " negative") for text in negative]


TRAIN = pairs(POSITIVE[:6], NEGATIVE[:6])
HELD_OUT = pairs(POSITIVE[6:], NEGATIVE[6:])
PROMPTS = ["Review: a great film.\nSentiment:", "The capital of France is"]


@pytest.fixture(scope="module")
def trained(smollm2_base, copy_lm):
    task = build_causal_lm(copy_lm(smollm2_base), freeze="lora:8", sequence_length=64,
                           learning_rate=2e-3)
    before = task.perplexity(HELD_OUT)["loss"]
    task.fit(TRAIN, epochs=2, batch_size=6, verbose=0, seed=0)
    return task, before


def _inputs(task, texts):
    ids = task._tokenize_many(texts)
    width = max(len(x) for x in ids)
    token_ids = np.zeros((len(ids), width), "int32")
    mask = np.zeros((len(ids), width), bool)
    for i, x in enumerate(ids):
        token_ids[i, :len(x)] = x
        mask[i, :len(x)] = True
    return {"token_ids": token_ids, "padding_mask": mask}


def test_lora_lowers_held_out_loss_and_leaves_base_weights(trained, smollm2_base):
    task, before = trained
    assert task.perplexity(HELD_OUT)["loss"] < before - 0.1
    base = smollm2_base.backbone.weights
    tuned = [w for w in task.backbone.weights if "lora" not in w.path]
    assert len(base) == len(tuned)
    for b, t in zip(base, tuned, strict=True):
        np.testing.assert_array_equal(b.numpy(), t.numpy(), err_msg=t.path)
    # Attention projections only: q, k, v, o in each of the 30 blocks.
    assert len(task.lora_layers()) == 30 * 4


def test_merge_and_adapters_give_the_same_outputs(trained, smollm2_base, copy_lm, tmp_path):
    task, _ = trained
    x = _inputs(task, PROMPTS)
    want = np.asarray(task(x))
    np.testing.assert_allclose(np.asarray(task.merge()(x)), want, atol=1e-4)
    path = task.save_adapters(str(tmp_path / "adapters.npz"))
    base_bytes = sum(w.numpy().nbytes for w in smollm2_base.backbone.weights)
    assert os.path.getsize(path) < base_bytes / 50
    fresh = build_causal_lm(copy_lm(smollm2_base), freeze="full", compile=False)
    fresh.load_adapters(path)
    np.testing.assert_allclose(np.asarray(fresh(x)), want, atol=1e-4)


def test_keras_file_reloads_in_a_fresh_process_with_its_adapters(
        trained, module_reload_in_fresh_process):
    task, _ = trained
    x = _inputs(task, PROMPTS)
    got, info = module_reload_in_fresh_process(task, x)
    assert info["type"] == "CausalLMTask" and info["freeze_policy"] == task.freeze_policy.to_dict()
    want = np.asarray(task(x))
    # Logits of about 10 through 30 blocks: float rounding differs across processes
    # (batched predict there, a direct call here) by a few 1e-4.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # Unmerged: only the adapters train, and they are the ones trained here.
    assert info["trainable"] == sorted(w.path for w in task.trainable_weights)
    assert all("lora" in path for path in info["trainable"])
    want = [layer.lora_kernel_b.numpy() for layer in task.lora_layers()]
    assert len(info["lora_b"]) == len(want) == 120
    for saved, trained_b in zip(info["lora_b"], want, strict=True):
        np.testing.assert_array_equal(np.asarray(saved, "float32"), trained_b)


def test_export_generate_in_a_fresh_process_equals_task_generate(trained, tmp_path):
    task, _ = trained
    path = export_generate_model(task, str(tmp_path / "smollm2"), verify=False)
    got = generate_in_fresh_process(path, PROMPTS, 6)
    assert got == task.generate(PROMPTS, max_new_tokens=6)
    assert got[1].strip().startswith("Paris")
