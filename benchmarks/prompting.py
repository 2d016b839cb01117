"""Prompt learning on real data: zero/few-shot classifiers and soft prompt tuning.

Datasets (offline): BBC News topics (5 classes) and Rotten Tomatoes snippets
(fresh vs rotten). Each is split once (stratified, seed 0) into a training
pool and a test set. Every method compared in one comparison is scored on the
very same test texts, with accuracy and macro F1 (sklearn), beside the
majority baseline (the training pool's majority class) on those same texts.

- BBC News zero-shot, one stratified sample of --bbc-llm texts (default 150)
  of the test set: MiniLM (embedding similarity to label prompts) and
  SmolLM2-135M-Instruct (label-word log-likelihood), both on that sample.
- Rotten Tomatoes, one test sample of --rt-test texts (default 150):
  SmolLM2 zero-shot, 8-shot (balanced in-context examples drawn from the
  training pool) and 8-shot with contextual calibration, all on that sample.
- BBC News soft prompt vs feature extraction on the whole BBC test set
  (--bbc-test, default 300): soft prompt tuning of the frozen MiniLM
  (20 prompt vectors + dense head) vs frozen MiniLM mean-pooled embeddings +
  the same dense head, both trained on the same --train examples.

SmolLM2 runs on CPU at roughly 1-3 texts/s here, hence the sample sizes; the
JSON carries each figure's sample size (`n`, and the flat summary keys
`bbc_zero_shot_n`, `rt_n`, `soft_prompt_test_n`, ... with their majority
rates). Prints one JSON object as the last line.

    .venv/bin/python benchmarks/prompting.py [--bbc-test 300] [--bbc-llm 150]
        [--rt-test 150] [--rt-few N] [--train 200] [--epochs 3]

--rt-few is kept for old command lines: when given (and smaller than
--rt-test) the Rotten Tomatoes sample shrinks to that many texts, for all
three settings alike.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from tfft.data import load_bbc_news, load_rotten_tomatoes
from tfft.prompting.causal_lm import CONTENT_FREE_INPUTS
from tfft.prompting import (
    CausalLMClassifier,
    SentenceEmbedder,
    TemplateEnsemble,
    ZeroShotEncoderClassifier,
    build_soft_prompt_classifier,
    count_trainable_params,
    load_smollm2,
)

BBC_ENCODER_VERBALIZER = {
    "business": ["business", "economy"], "entertainment": ["entertainment", "film and music"],
    "politics": ["politics"], "sports": ["sport"], "tech": ["technology"],
}
BBC_LM_VERBALIZER = {
    "business": ["business"], "entertainment": ["entertainment"], "politics": ["politics"],
    "sports": ["sport"], "tech": ["technology"],
}
BBC_LM_TEMPLATE = (
    "Classify the news article as business, entertainment, politics, sport or "
    "technology.\n\nArticle: {input}\nTopic: {label}"
)
RT_VERBALIZER = {"fresh": ["positive"], "rotten": ["negative"]}
RT_TEMPLATE = "Review: {input}\nSentiment: {label}"


def split(data, test_size, pool_size, seed=0):
    """Stratified disjoint (pool, test) samples."""
    idx = np.arange(len(data))
    pool, test = train_test_split(idx, test_size=test_size, stratify=data.y, random_state=seed)
    if pool_size < len(pool):
        pool, _ = train_test_split(pool, train_size=pool_size, stratify=data.y[pool],
                                   random_state=seed)
    return data.take(np.sort(pool)), data.take(np.sort(test))


def first(data, n, seed=1):
    """A stratified subsample of n examples."""
    if n >= len(data):
        return data
    idx, _ = train_test_split(np.arange(len(data)), train_size=n, stratify=data.y,
                              random_state=seed)
    return data.take(np.sort(idx))


def metrics(y_true, y_pred, seconds=None, n=None):
    out = {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro")), 4),
    }
    if n is not None:
        out["n"] = int(n)
    if seconds is not None:
        out["seconds"] = round(seconds, 1)
        out["examples_per_s"] = round(n / seconds, 2) if n else None
    return out


def majority(pool, test):
    label = int(np.bincount(pool.y).argmax())
    return metrics(test.y, np.full(len(test), label), n=len(test))


def to_ids(names, predicted):
    index = {c: i for i, c in enumerate(names)}
    return np.array([index[p] for p in predicted])


def run_classifier(clf, data):
    start = time.perf_counter()
    predicted = clf.predict(list(data.x))
    seconds = time.perf_counter() - start
    return metrics(data.y, to_ids(data.class_names, predicted), seconds, len(data))


def dense_head(num_classes):
    return keras.layers.Dense(num_classes, name="head")


def feature_extraction(backbone, train, test, epochs):
    """Frozen MiniLM mean-pooled embeddings + a dense head (trained on cached features)."""
    start = time.perf_counter()
    embed = SentenceEmbedder(backbone, batch_size=32)
    train_features, test_features = embed(train.x), embed(test.x)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((train_features.shape[1],))
    model = keras.Model(inputs, dense_head(len(train.class_names))(inputs))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Cached features make head epochs nearly free, so the head trains longer.
    head_epochs = max(epochs, 50)
    model.fit(train_features, train.y, epochs=head_epochs, batch_size=16, verbose=0)
    predicted = model.predict(test_features, verbose=0).argmax(axis=1)
    result = metrics(test.y, predicted, time.perf_counter() - start, len(test))
    result["trainable_params"] = count_trainable_params(model)
    result["head_epochs"] = head_epochs
    return result


def soft_prompt_tuning(backbone, train, test, epochs, num_tokens=20):
    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = build_soft_prompt_classifier(backbone, len(train.class_names), num_tokens=num_tokens)
    model.compile(keras.optimizers.Adam(3e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_train = backbone.preprocess(tf.constant(list(train.x)))
    x_test = backbone.preprocess(tf.constant(list(test.x)))
    model.fit(x_train, train.y, epochs=epochs, batch_size=16, verbose=0)
    predicted = model.predict(x_test, batch_size=32, verbose=0).argmax(axis=1)
    result = metrics(test.y, predicted, time.perf_counter() - start, len(test))
    result["trainable_params"] = count_trainable_params(model)
    result["num_tokens"] = num_tokens
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bbc-test", type=int, default=300,
                        help="BBC test set (soft prompt vs feature extraction)")
    parser.add_argument("--bbc-llm", type=int, default=150,
                        help="BBC zero-shot sample, scored by MiniLM and SmolLM2 alike")
    parser.add_argument("--rt-test", type=int, default=150,
                        help="Rotten Tomatoes sample, scored zero-shot, 8-shot and calibrated")
    parser.add_argument("--rt-few", type=int, default=None,
                        help="deprecated: shrinks the Rotten Tomatoes sample (all settings)")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--skip-soft-prompt", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = {"benchmark": "prompting", "seed": 0}

    bbc = load_bbc_news()
    bbc_pool, bbc_test = split(bbc, args.bbc_test, max(args.train, 100))
    bbc_llm = first(bbc_test, args.bbc_llm)
    minilm = tfft.load_backbone("minilm", sequence_length=args.sequence_length)
    # One sample for both zero-shot encoders: the figures compare like for like.
    bbc_majority = majority(bbc_pool, bbc_llm)
    bbc_results = {
        "classes": bbc.class_names, "test_size": len(bbc_llm),
        "majority_baseline": bbc_majority,
        "majority_baseline_llm_sample": bbc_majority,
    }
    encoder = ZeroShotEncoderClassifier(
        minilm, TemplateEnsemble(["This news article is about {label}.", "{label}"]),
        BBC_ENCODER_VERBALIZER, class_names=bbc.class_names,
    )
    bbc_results["minilm_zero_shot"] = run_classifier(encoder, bbc_llm)
    bbc_results["minilm_zero_shot"]["sequence_length"] = args.sequence_length
    print("bbc minilm zero-shot", bbc_results["minilm_zero_shot"], flush=True)

    rt = load_rotten_tomatoes(classes=["fresh", "rotten"])
    rt_pool, rt_test = split(rt, args.rt_test, 2000)
    # One sample for zero-shot, 8-shot and calibrated 8-shot.
    rt_sample = rt_test if args.rt_few is None else first(rt_test, args.rt_few)
    rt_majority = majority(rt_pool, rt_sample)
    rt_results = {
        "classes": rt.class_names, "test_size": len(rt_sample),
        "majority_baseline": rt_majority,
        "majority_baseline_few_shot_sample": rt_majority,
    }
    if not args.skip_llm:
        lm = load_smollm2(sequence_length=2048)
        llm = CausalLMClassifier(lm, BBC_LM_TEMPLATE, BBC_LM_VERBALIZER,
                                 class_names=bbc.class_names, max_input_tokens=192)
        bbc_results["smollm2_zero_shot"] = run_classifier(llm, bbc_llm)
        bbc_results["smollm2_zero_shot"]["max_input_tokens"] = 192
        print("bbc smollm2 zero-shot", bbc_results["smollm2_zero_shot"], flush=True)

        zero = CausalLMClassifier(lm, RT_TEMPLATE, RT_VERBALIZER, class_names=rt.class_names,
                                  max_input_tokens=96)
        rt_results["smollm2_zero_shot"] = run_classifier(zero, rt_sample)
        # Same sample as the 8-shot runs (kept for readers of the older JSON).
        rt_results["smollm2_zero_shot_on_few_shot_sample"] = rt_results["smollm2_zero_shot"]
        print("rt smollm2 zero-shot", rt_results["smollm2_zero_shot"], flush=True)
        few = CausalLMClassifier(lm, RT_TEMPLATE, RT_VERBALIZER, class_names=rt.class_names,
                                 k_shot=8, examples=rt_pool, seed=0, max_input_tokens=64)
        start = time.perf_counter()
        scores = few.scores(list(rt_sample.x))
        seconds = time.perf_counter() - start
        rt_results["smollm2_8_shot"] = metrics(rt_sample.y, scores.argmax(axis=1), seconds,
                                               len(rt_sample))
        rt_results["smollm2_8_shot"]["shot_labels"] = [label for _, label in few.shots]
        # Contextual calibration (what `calibrate=True` does), from the same scores.
        content_free = few.scores(list(CONTENT_FREE_INPUTS)).mean(axis=0)
        rt_results["smollm2_8_shot_calibrated"] = metrics(
            rt_sample.y, (scores - content_free).argmax(axis=1), n=len(rt_sample))
        print("rt smollm2 8-shot", rt_results["smollm2_8_shot"],
              rt_results["smollm2_8_shot_calibrated"], flush=True)

    if not args.skip_soft_prompt:
        train = first(bbc_pool, args.train, seed=2)
        comparison = {"dataset": "bbc_news", "train_size": len(train),
                      "test_size": len(bbc_test), "epochs": args.epochs,
                      "sequence_length": args.sequence_length,
                      "majority_baseline": majority(bbc_pool, bbc_test)}
        comparison["feature_extraction"] = feature_extraction(minilm, train, bbc_test,
                                                              args.epochs)
        print("feature extraction", comparison["feature_extraction"], flush=True)
        comparison["soft_prompt"] = soft_prompt_tuning(minilm, train, bbc_test, args.epochs)
        print("soft prompt", comparison["soft_prompt"], flush=True)
        results["soft_prompt_vs_feature_extraction"] = comparison

    results["bbc_news"] = bbc_results
    results["rotten_tomatoes"] = rt_results
    # Flat summary: every figure with the size and majority rate of its sample.
    results["bbc_zero_shot_n"] = len(bbc_llm)
    results["bbc_zero_shot_majority"] = bbc_majority["accuracy"]
    results["rt_n"] = len(rt_sample)
    results["rt_majority"] = rt_majority["accuracy"]
    if not args.skip_soft_prompt:
        results["soft_prompt_train_n"] = comparison["train_size"]
        results["soft_prompt_test_n"] = comparison["test_size"]
        results["soft_prompt_majority"] = comparison["majority_baseline"]["accuracy"]
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
