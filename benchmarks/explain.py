"""Time `tfft.evaluation.explain` on BBC News texts: integrated gradients and occlusion.

    python benchmarks/explain.py                  # 100 texts, 3 runs, steps 50
    python benchmarks/explain.py --texts 20 --runs 1

The model is the real all-MiniLM-L6-v2 with a 5-class head (untrained: the
cost of an explanation does not depend on the head's weights, so no model is
trained here). Baseline, measured in the same run: the model's own
prediction of the same texts (`Task.predict`), so `ig_vs_predict` says how
many predictions one explanation costs. Prints one JSON line last: median
seconds of the runs.
"""

import argparse
import json
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import numpy as np

from tfft.data import load_bbc_news
from tfft.evaluation import explain

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import add_distribution_args, setup_distribution

logger = logging.getLogger("benchmarks.explain")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--occlusion-texts", type=int, default=20,
                        help="Occlusion is timed on this many texts (one forward per word).")
    add_distribution_args(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _, settings = setup_distribution(args)

    data = load_bbc_news()
    rng = np.random.default_rng(0)
    texts = [str(data.x[i]) for i in rng.choice(len(data.y), args.texts, replace=False)]
    backbone = tfft.load_backbone("minilm", sequence_length=args.sequence_length)
    task = tfft.build_model(backbone, task="multiclass", num_classes=len(data.class_names),
                            class_names=list(data.class_names))
    # Warm-up: traces the prediction and the gradient functions once.
    task.predict(texts[:4], verbose=0)
    explain(task, texts[:2], steps=args.steps)

    predict_s, ig_s, occlusion_s, errors = [], [], [], []
    for run in range(args.runs):
        t0 = time.perf_counter()
        task.predict(texts, verbose=0)
        predict_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        explanation = explain(task, texts, method="integrated_gradients", steps=args.steps)
        ig_s.append(time.perf_counter() - t0)
        errors.append(float(explanation.completeness_error.max()))
        t0 = time.perf_counter()
        explain(task, texts[:args.occlusion_texts], method="occlusion",
                max_words=args.sequence_length)
        occlusion_s.append(time.perf_counter() - t0)
        logger.info("run %d/%d: predict %.1f s, integrated gradients %.1f s, occlusion "
                    "(%d texts) %.1f s", run + 1, args.runs, predict_s[-1], ig_s[-1],
                    args.occlusion_texts, occlusion_s[-1])

    predict, ig, occlusion = (statistics.median(v) for v in (predict_s, ig_s, occlusion_s))
    print(json.dumps({
        "benchmark": "explain", "texts": args.texts, "runs": args.runs, "steps": args.steps,
        "sequence_length": args.sequence_length, "backbone": "minilm",
        "predict_seconds": round(predict, 3),
        "integrated_gradients_seconds": round(ig, 2),
        "integrated_gradients_seconds_per_text": round(ig / args.texts, 3),
        "ig_vs_predict": round(ig / predict, 1),
        "occlusion_seconds_per_text": round(occlusion / args.occlusion_texts, 3),
        "worst_completeness_error": round(max(errors), 5),
        **settings,
    }))


if __name__ == "__main__":
    main()
