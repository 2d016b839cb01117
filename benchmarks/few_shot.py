"""Few-shot text classification: zero-shot, probe, full fine-tuning and contrastive few-shot.

MiniLM (`tfft.load_backbone("minilm")`, offline) on BBC News topics (5 classes) and
Rotten Tomatoes fresh vs rotten, with K labelled examples per class (K = 8 and 16)
drawn from a training pool with each of several seeds. Every method is scored on the
same fixed, stratified test sample (macro F1, scikit-learn), disjoint from the pool:

- zero_shot: label prompts embedded by the frozen encoder become the head
  (`tfft.prompting.build_zero_shot_model`'s head; no examples used);
- probe: the head (softmax on L2-normalised mean-pooled embeddings) fitted on the
  frozen encoder's embeddings of the K-shot examples (`tfft.few_shot_fit(epochs=0)`);
- full: that probe, then the whole encoder and head fine-tuned with cross-entropy on
  the same examples (`tfft.fine_tune(unfreeze="full")`, transformer preset, about as
  many encoder passes as the contrastive stage: ceil(320 / examples) epochs);
- contrastive: `tfft.few_shot_fit` with its defaults (CoSENT on every pair inside
  class-balanced batches of 16, 1 epoch of at least 20 steps, AdamW 1e-4, whole
  encoder, then halfway back to the pretrained weights: interpolation=0.5), starting
  from the same label prompts as zero_shot.

The frozen encoder's test embeddings go through tfft's feature cache (computed once,
reused by zero_shot and probe, and by later runs). Each run restores the pretrained
weights first. Runs go 8 shots before 16, so a cut-short run still has whole 8-shot
rows; every finished run is appended to --out as it ends.

Prints one JSON object as the last line: `{bbc,rt}_{8,16}_{method}_macro_f1_{mean,std}`
(std: population standard deviation over the seeds), the sample sizes
(`{bbc,rt}_test_n`, `{bbc,rt}_{8,16}_train_n`) and the settings.

    .venv/bin/python benchmarks/few_shot.py [--seeds 5] [--test 500]
        [--sequence-length 64] [--plot benchmarks/results/few_shot.png]
        [--methods contrastive] [--out RUNS.jsonl]
    .venv/bin/python benchmarks/few_shot.py --summarize OLD.jsonl NEW.jsonl

`--methods` reruns some methods only (after a change to them); `--summarize` merges
runs files, a later file's score replacing an earlier one's for the same run.
"""

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from tfft.data import load_bbc_news, load_rotten_tomatoes
from tfft.prompting.few_shot import embed, few_shot_fit, sample_shots
from tfft.training import cached_features
from tfft.training.feature_cache import head_model

METHODS = ("zero_shot", "probe", "full", "contrastive")
PROMPTS = {
    "bbc": ("This article is about {label}.",
            {"business": ["business"], "entertainment": ["entertainment"],
             "politics": ["politics"], "sport": ["sport"], "tech": ["technology"]}),
    "rt": ("A {label} review.", {"fresh": ["positive"], "rotten": ["negative"]}),
}
FULL_PASSES = 320


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load(name, test_size):
    data = load_bbc_news() if name == "bbc" else load_rotten_tomatoes(["fresh", "rotten"])
    pool, test = train_test_split(np.arange(len(data)), test_size=test_size, stratify=data.y,
                                  random_state=0)
    return data.take(np.sort(pool)), data.take(np.sort(test))


def macro_f1(y, probs):
    return float(f1_score(y, np.asarray(probs).argmax(-1), average="macro"))


def head_scores(task, features):
    return head_model(task).predict(np.asarray(features), verbose=0)


def run_setting(name, pool, test, backbone, initial, shots, seed, test_features,
                methods=METHODS):
    template, verbalizer = PROMPTS[name]
    if name == "bbc":
        verbalizer = {c: verbalizer.get(c, [c]) for c in pool.class_names}
    picked = sample_shots(pool.y, shots, seed)
    x, y = [str(t) for t in pool.x[picked]], pool.y[picked]
    common = dict(class_names=list(pool.class_names), seed=seed, verbose=0)
    out, seconds = {}, {}

    backbone.model.set_weights(initial)
    if "zero_shot" in methods or "probe" in methods:
        started = time.time()
        zero = few_shot_fit(backbone, x, y, epochs=0, head_epochs=0, template=template,
                            verbalizer=verbalizer, **common)
        out["zero_shot"] = macro_f1(test.y, head_scores(zero, test_features))
        probe = few_shot_fit(backbone, x, y, epochs=0, **common)
        out["probe"] = macro_f1(test.y, head_scores(probe, test_features))
        seconds["zero_shot+probe"] = time.time() - started

    if "contrastive" in methods:
        started = time.time()
        task = few_shot_fit(backbone, x, y, template=template, verbalizer=verbalizer, **common)
        out["contrastive"] = macro_f1(test.y, head_scores(task, embed(task, test.x)))
        seconds["contrastive"] = time.time() - started
        backbone.model.set_weights(initial)

    if "full" not in methods:
        return out, seconds, len(y)
    started = time.time()
    task = few_shot_fit(backbone, x, y, epochs=0, **common)       # the probe's head
    # Fixed-length batches, as when the README's "full" scores were measured: cut
    # batches compute the same, but dropout draws its masks per shape.
    task.trim_batches = False
    epochs = math.ceil(FULL_PASSES / len(y))
    tfft.fine_tune(task, (np.asarray(x, dtype=object), y), epochs=epochs, freeze_epochs=0,
                   unfreeze="full", fine_tune_lr=1e-4, batch_size=8, verbose=0, seed=seed,
                   make_dataset=task.make_dataset)
    out["full"] = macro_f1(test.y, head_scores(task, embed(task, test.x)))
    seconds["full"] = time.time() - started
    backbone.model.set_weights(initial)
    return out, seconds, len(y)


def summarize(records, sizes, settings):
    summary = {}
    for (name, shots), rows in records.items():
        for method in METHODS:
            if any(method not in r["f1"] for r in rows):
                continue
            values = np.array([r["f1"][method] for r in rows])
            key = f"{name}_{shots}_{method}_macro_f1"
            summary[f"{key}_mean"] = round(float(values.mean()), 4)
            summary[f"{key}_std"] = round(float(values.std()), 4)
        summary[f"{name}_{shots}_seeds"] = len(rows)
    return {**summary, **sizes, **settings}


def plot(summary, names, shot_counts, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [(n, k) for n in names for k in shot_counts
                if all(f"{n}_{k}_{m}_macro_f1_mean" in summary for m in METHODS)]
    width = 0.2
    fig, ax = plt.subplots(figsize=(2.2 * len(settings) + 2, 4))
    for i, method in enumerate(METHODS):
        xs = np.arange(len(settings)) + (i - 1.5) * width
        means = [summary[f"{n}_{k}_{method}_macro_f1_mean"] for n, k in settings]
        stds = [summary[f"{n}_{k}_{method}_macro_f1_std"] for n, k in settings]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=method.replace("_", "-"))
    ax.set_xticks(np.arange(len(settings)))
    ax.set_xticklabels([f"{'BBC News' if n == 'bbc' else 'Rotten Tomatoes'}\n{k} per class"
                        for n, k in settings])
    ax.set_ylabel("test macro F1 (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("MiniLM, few labelled examples per class")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize_file(args):
    """Summarises runs files; a later file's scores replace an earlier one's for the same
    dataset, shots, seed and method (a rerun of one method after a change)."""
    runs, sizes = {}, {}
    for path in args.summarize:
        with open(path) as f:
            for line in f:
                run = json.loads(line)
                key = (run["dataset"], run["shots"], run["seed"])
                runs.setdefault(key, {}).update(run["macro_f1"])
                sizes[f"{run['dataset']}_test_n"] = run["test_n"]
                sizes[f"{run['dataset']}_{run['shots']}_train_n"] = run["train_n"]
    records = {}
    for (name, shots, _), f1 in sorted(runs.items()):
        records.setdefault((name, shots), []).append({"f1": f1})
    settings = {"backbone": "minilm (all-MiniLM-L6-v2)", "sequence_length": args.sequence_length,
                "metric": "macro F1, mean and population std over seeds",
                "runs_files": args.summarize}
    summary = summarize(records, sizes, settings)
    if args.plot:
        names = [n for n in ("bbc", "rt") if any(k[0] == n for k in records)]
        plot(summary, names, sorted({k[1] for k in records}), args.plot)
    print(json.dumps(summary))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shots", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--datasets", nargs="+", default=["bbc", "rt"], choices=["bbc", "rt"])
    parser.add_argument("--test", type=int, default=500, help="fixed test sample size")
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--out", default="few_shot_runs.jsonl",
                        help="each finished run, one JSON line")
    parser.add_argument("--plot", default="benchmarks/results/few_shot.png")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="run only these methods (zero_shot and probe run together)")
    parser.add_argument("--summarize", metavar="RUNS_JSONL", nargs="+",
                        help="print the summary (and plot) of the finished runs in these files "
                        "instead of running (for a run cut short); where files score the same "
                        "run and method, the later file wins")
    args = parser.parse_args()
    if args.summarize:
        return summarize_file(args)

    backbone = tfft.load_backbone("minilm", sequence_length=args.sequence_length)
    initial = backbone.model.get_weights()
    data, sizes, test_features = {}, {}, {}
    for name in args.datasets:
        pool, test = load(name, args.test)
        data[name] = (pool, test)
        sizes[f"{name}_test_n"] = len(test)
        sizes[f"{name}_pool_n"] = len(pool)
        frozen = tfft.build_model(backbone, num_classes=len(pool.class_names),
                                  normalize_features=True, compile=False)
        features, hit = cached_features(frozen, np.asarray(test.x, dtype=object),
                                        frozen.make_dataset, verbose=0)
        test_features[name] = np.asarray(features)
        counts = {c: int(n) for c, n in zip(test.class_names, np.bincount(test.y), strict=True)}
        log(f"{name}: pool {len(pool)}, test {len(test)} {counts}, "
            f"frozen test features {'from the cache' if hit else 'computed and cached'}")

    records = {}
    total = len(args.shots) * len(args.datasets) * args.seeds
    done, started = 0, time.time()
    for shots in args.shots:
        for name in args.datasets:
            pool, test = data[name]
            for seed in range(args.seeds):
                f1, seconds, n = run_setting(name, pool, test, backbone, initial, shots, seed,
                                             test_features[name], args.methods)
                sizes[f"{name}_{shots}_train_n"] = n
                records.setdefault((name, shots), []).append({"f1": f1})
                done += 1
                eta = (time.time() - started) / done * (total - done)
                log(f"{done}/{total} {name} {shots}-shot seed {seed}: "
                    + ", ".join(f"{m} {v:.3f}" for m, v in f1.items())
                    + f" ({', '.join(f'{k} {v:.0f}s' for k, v in seconds.items())}; "
                    f"about {eta / 60:.0f} min left)")
                with open(args.out, "a") as f:
                    f.write(json.dumps({"dataset": name, "shots": shots, "seed": seed,
                                        "train_n": n, "test_n": len(test), "macro_f1": f1,
                                        "seconds": seconds}) + "\n")

    settings = {"backbone": "minilm (all-MiniLM-L6-v2)", "sequence_length": args.sequence_length,
                "seeds": args.seeds, "metric": "macro F1, mean and population std over seeds",
                "seconds": round(time.time() - started, 1)}
    summary = summarize(records, sizes, settings)
    if args.plot and set(args.methods) == set(METHODS):
        plot(summary, args.datasets, args.shots, args.plot)
        log(f"plot written to {args.plot}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
