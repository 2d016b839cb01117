"""Soft prompts on the real SmolLM2-135M-Instruct: the prompt learns, the backbone does not."""

import hashlib

import keras
import keras_hub
import numpy as np
import pytest

from tfft.prompting import build_soft_prompt_causal_lm

pytestmark = pytest.mark.slow

ITEMS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear",
         "plum", "melon", "kiwi"]
# One fixed format; the prompt can only learn the format, so held-out items of the
# same format must get easier too.
TEXTS = [f"Item: {item}. Verdict: ACCEPTED." for item in ITEMS]
TRAIN, HELD_OUT = TEXTS[:4], TEXTS[8:]


def _digests(model):
    return {w.path: hashlib.blake2b(np.ascontiguousarray(w.numpy()).tobytes(),
                                    digest_size=16).hexdigest()
            for w in model.weights}


def test_soft_prompt_lowers_held_out_loss_and_leaves_smollm2_unchanged(smollm2):
    backbone = smollm2.backbone
    frozen_before = _digests(backbone)
    lm = build_soft_prompt_causal_lm(backbone, num_tokens=4, verbose=False)
    assert {w.path for w in lm.trainable_weights} == {lm.soft_prompt.prompt.path}
    # 16 tokens hold every text (12-13 tokens each) without a start token, as SmolLM2.
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        smollm2.preprocessor.tokenizer, sequence_length=16, add_start_token=False)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def batch(texts):
        x, y, w = preprocessor(texts)
        return {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}, y, w

    def held_out_loss():
        x, y, w = batch(HELD_OUT)
        return float(loss(y, lm(x), sample_weight=w))

    before = held_out_loss()
    prompt_before = lm.soft_prompt.prompt.numpy().copy()
    # Eager steps: a few batches do not repay tracing a 135M-parameter train step.
    lm.compile(keras.optimizers.Adam(0.1), loss, weighted_metrics=[], run_eagerly=True)
    x, y, w = batch(TRAIN)
    lm.fit(x, y, sample_weight=w, epochs=3, batch_size=len(TRAIN), verbose=0)
    after = held_out_loss()

    # Measured: 4.12 -> 2.80 nats per token after the 3 steps; half a nat is a
    # clear drop that noise in the last digits cannot fake.
    assert after < before - 0.5, (before, after)
    assert not np.array_equal(lm.soft_prompt.prompt.numpy(), prompt_before)
    frozen_after = _digests(backbone)
    assert frozen_after.keys() == frozen_before.keys()
    changed = sorted(p for p in frozen_before if frozen_after[p] != frozen_before[p])
    assert not changed, f"backbone weights changed: {changed[:5]}"
