"""SmolLM2-135M-Instruct on Rotten Tomatoes: zero-shot, 8-shot and LoRA fine-tuned.

Rotten Tomatoes (fresh vs rotten) is split once (stratified, seed 0) into a
pool and a fixed test sample. On the same test sample:

- `zero_shot_accuracy` / `few_shot_accuracy`: `tfft.prompting.CausalLMClassifier`
  scoring " positive"/" negative" after "Review: ...\\nSentiment:" (0 and 8
  in-context examples from the pool);
- `lora_accuracy`: `tfft.build_model("offline:smollm2", task="causal_lm",
  freeze="lora:8")` (`--lora-mlp`: the MLP projections too) trained `--epochs`
  (default one) on `--train` pool examples as prompt/completion pairs ("Review:
  ...\\nSentiment:" -> " positive"), AdamW with a tenth of the steps of warmup
  then a cosine to zero, then greedy generation read as a label
  (`tfft.evaluation.causal_lm`);
- `zero_shot_scoring_accuracy` / `lora_scoring_accuracy`: the task before
  and after training, scored the same way
  (`CausalLMTask.score_completions`: the likelier of " positive" and
  " negative" after the prompt, tokenised whole as in training), so the two
  differ only in the weights. (`CausalLMClassifier` tokenises its template's
  pieces apart, which the tuned model never saw.)

`lora_vs_zero_shot`: the paired difference on the same texts (LoRA generation
minus `CausalLMClassifier` zero-shot): the accuracy gap, its 95% interval from
10,000 bootstrap resamples of the test texts, and the exact McNemar p-value
(two-sided binomial test on the texts exactly one of the two gets right);
`lora_scoring_vs_zero_shot_scoring` likewise for the two scoring rows.

Also `train_tokens_per_s` (non-padding tokens through the LoRA training
step, tracing included), `generate_tokens_per_s_batch1` and `_batch8`
(greedy, 32 new tokens per prompt, after a warm-up call) and `peak_rss_mb`.
Prints one JSON line. The CPU may be shared: times are noisy.

    .venv/bin/python benchmarks/causal_lm.py --train 640 --test 1000 --lora-mlp --learning-rate 1e-3
"""

import argparse
import json
import resource
import sys
import time

import numpy as np
from scipy.stats import binomtest
from sklearn.model_selection import train_test_split

import tfft
from tfft.backbones.causal_lm import load_smollm2
from tfft.data import load_rotten_tomatoes
from tfft.evaluation.causal_lm import evaluate_completions
from tfft.prompting import CausalLMClassifier

TEMPLATE = "Review: {input}\nSentiment: {label}"
VERBALIZER = {"fresh": ["positive"], "rotten": ["negative"]}
WORDS = {"fresh": "positive", "rotten": "negative"}
GENERATION_PROMPTS = [
    "Once upon a time", "The best way to learn a language is", "Paris is a city",
    "Write a sentence about the sea:", "My favourite film is", "The weather today",
    "A good breakfast has", "In the year 2050,",
]


def prompt(text):
    return f"Review: {text}\nSentiment:"


def paired_difference(correct_a, correct_b, resamples=10_000, seed=0):
    """A minus B on the same texts: gap, bootstrap 95% interval, McNemar p."""
    a, b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(resamples, len(a)))
    gaps = (a[draws] - b[draws]).mean(axis=1)
    only_a, only_b = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    p_value = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"gap": round(float(np.mean(a - b)), 4),
            "ci95": [round(float(q), 4) for q in np.percentile(gaps, [2.5, 97.5])],
            "only_a_right": only_a, "only_b_right": only_b,
            "mcnemar_p": float(f"{p_value:.3g}")}


def generation_speed(task, batch_size, new_tokens=32):
    prompts = GENERATION_PROMPTS[:8]
    task.generate(prompts[:batch_size], max_new_tokens=new_tokens, batch_size=batch_size)
    start = time.perf_counter()
    out = task.generate(prompts, max_new_tokens=new_tokens, batch_size=batch_size)
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in task._tokenize_many([o for o in out if o]))
    return tokens / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--max-input-tokens", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lora-mlp", action="store_true",
                        help="LoRA on the MLP projections too")
    parser.add_argument("--skip-few-shot", action="store_true")
    args = parser.parse_args()

    rt = load_rotten_tomatoes(classes=["fresh", "rotten"])
    idx = np.arange(len(rt))
    pool, test = train_test_split(idx, test_size=args.test, stratify=rt.y, random_state=0)
    pool_data, test_data = rt.take(np.sort(pool)), rt.take(np.sort(test))
    train_idx, _ = train_test_split(np.arange(len(pool_data)), train_size=args.train,
                                    stratify=pool_data.y, random_state=0)
    train_data = pool_data.take(np.sort(train_idx))
    names = rt.class_names
    results = {"test_size": len(test_data), "train_size": len(train_data),
               "model": "SmolLM2-135M-Instruct", "lora_rank": 8, "epochs": args.epochs,
               "lora_mlp": args.lora_mlp, "learning_rate": args.learning_rate,
               "batch_size": args.batch_size}

    lm = load_smollm2(sequence_length=1024)
    start = time.perf_counter()
    zero = CausalLMClassifier(lm, TEMPLATE, VERBALIZER, class_names=names,
                              max_input_tokens=args.max_input_tokens)
    predicted = zero.predict(list(test_data.x))
    zero_correct = [names.index(p) == y for p, y in zip(predicted, test_data.y, strict=True)]
    results["zero_shot_accuracy"] = round(float(np.mean(zero_correct)), 4)
    results["zero_shot_seconds"] = round(time.perf_counter() - start, 1)
    print("zero-shot", results["zero_shot_accuracy"], file=sys.stderr, flush=True)
    if not args.skip_few_shot:
        start = time.perf_counter()
        few = CausalLMClassifier(lm, TEMPLATE, VERBALIZER, class_names=names, k_shot=8,
                                 examples=pool_data, seed=0,
                                 max_input_tokens=args.max_input_tokens)
        predicted = few.predict(list(test_data.x))
        results["few_shot_accuracy"] = round(float(np.mean(
            [names.index(p) == y for p, y in zip(predicted, test_data.y, strict=True)])), 4)
        results["few_shot_seconds"] = round(time.perf_counter() - start, 1)
        print("8-shot", results["few_shot_accuracy"], file=sys.stderr, flush=True)

    # LoRA changes the model in place: after the prompting runs.
    task = tfft.build_model(lm, task="causal_lm", freeze="lora:8",
                            sequence_length=args.sequence_length, lora_mlp=args.lora_mlp,
                            compile=False)
    results["trainable_parameters"] = task.trainable_parameter_count()
    pairs = [(prompt(x), " " + WORDS[names[y]]) for x, y in zip(train_data.x, train_data.y,
                                                                 strict=True)]
    examples = task.tokenize_data(pairs)
    test_prompts = [prompt(x) for x in test_data.x]
    answers = np.array([WORDS[names[y]] == "positive" for y in test_data.y])

    def scoring_correct():
        scores = task.score_completions(test_prompts, [" negative", " positive"],
                                        batch_size=16)
        return (scores.argmax(-1) == 1) == answers

    zero_scoring_correct = scoring_correct()  # the adapters start at zero
    results["zero_shot_scoring_accuracy"] = round(float(np.mean(zero_scoring_correct)), 4)
    print("zero-shot scoring", results["zero_shot_scoring_accuracy"], file=sys.stderr,
          flush=True)
    batches = task.make_dataset(examples, batch_size=args.batch_size, shuffle=True, seed=0)
    task.compile(learning_rate=args.learning_rate,
                 total_steps=sum(1 for _ in batches) * args.epochs)
    held_out = [(prompt(x), " " + WORDS[names[y]]) for x, y in zip(test_data.x[:64],
                                                                    test_data.y[:64],
                                                                    strict=True)]
    results["held_out_perplexity_before"] = round(task.perplexity(held_out)["perplexity"], 3)
    start = time.perf_counter()
    task.fit(batches, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    results["train_seconds"] = round(seconds, 1)
    results["train_tokens_per_s"] = round(examples.num_tokens * args.epochs / seconds, 1)
    results["held_out_perplexity_after"] = round(task.perplexity(held_out)["perplexity"], 3)
    start = time.perf_counter()
    report = evaluate_completions(task, test_prompts,
                                  [WORDS[names[y]] for y in test_data.y],
                                  class_names=["negative", "positive"], max_new_tokens=2,
                                  batch_size=args.batch_size)
    results["lora_accuracy"] = round(report.metrics["accuracy"], 4)
    results["lora_macro_f1"] = round(report.metrics["macro_f1"], 4)
    results["lora_unparsed"] = report.metrics["unparsed"]
    results["lora_eval_seconds"] = round(time.perf_counter() - start, 1)
    lora_correct = report.y_true == report.y_pred
    results["lora_vs_zero_shot"] = paired_difference(lora_correct, zero_correct)
    print("lora", results["lora_accuracy"], file=sys.stderr, flush=True)
    lora_scoring_correct = scoring_correct()
    results["lora_scoring_accuracy"] = round(float(np.mean(lora_scoring_correct)), 4)
    results["lora_scoring_vs_zero_shot_scoring"] = paired_difference(lora_scoring_correct,
                                                                     zero_scoring_correct)
    print("lora scoring", results["lora_scoring_accuracy"], file=sys.stderr, flush=True)
    results["generate_tokens_per_s_batch1"] = round(generation_speed(task, 1), 2)
    results["generate_tokens_per_s_batch8"] = round(generation_speed(task, 8), 2)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
