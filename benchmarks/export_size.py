"""SavedModel size, write time and load cost: each weight stored once vs Keras's own write.

Keras 3 (3.12 to 3.15 at least; keras-team/keras#23553) writes every weight of
an `ExportArchive` twice; tfft's exports go through
`tfft._compat.write_export_archive`, which stores each once. This script
exports the same untrained MiniLM classifier (all-MiniLM-L6-v2, 5 classes,
sequence length 64, raw strings in) with `tfft.export_saved_model` both ways
(`baseline`: the archive written by Keras's `write_out`), `--runs` times each,
alternating, and measures per export:

- `variables_mb`: the size of `variables/`;
- `export_seconds`: `tfft.export_saved_model(..., verify=False)`;
- `load_seconds` and `load_peak_rss_mb`: a fresh Python process that imports
  TensorFlow Text, loads the SavedModel and classifies one text (its peak
  resident memory, TensorFlow's import included);

and checks that both exports give the same probabilities. Medians over the
runs; `ratio_*` is tfft over baseline. Prints one JSON line.

    .venv/bin/python benchmarks/export_size.py [--runs 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import tfft
import tfft.export.saved_model as saved_model_module

TEXT = "Shares rose after the bank's profit report"
_LOAD = r"""
import json, resource, sys, time
start = time.perf_counter()
import tensorflow as tf
import tensorflow_text  # noqa: F401
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(tf.constant([sys.argv[2]]))["probabilities"].numpy()[0].tolist()
print(json.dumps({"seconds": time.perf_counter() - start, "probabilities": out,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _keras_write(archive, path):
    archive.write_out(path, verbose=False)


def _folder_mb(path):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names) / 2**20


def measure(task, directory, writer):
    saved_model_module.write_export_archive = writer
    start = time.perf_counter()
    path = tfft.export_saved_model(task, directory, verify=False)
    seconds = time.perf_counter() - start
    loaded = subprocess.run([sys.executable, "-c", _LOAD, path, TEXT], capture_output=True,
                            text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    load = json.loads(loaded.stdout.strip().splitlines()[-1])
    return {"variables_mb": _folder_mb(os.path.join(path, "variables")),
            "export_seconds": seconds, "load_seconds": load["seconds"],
            "load_peak_rss_mb": load["peak_rss_mb"], "probabilities": load["probabilities"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    task = tfft.build_model("minilm", task="multiclass", num_classes=5, sequence_length=64,
                            class_names=["business", "entertainment", "politics", "sports",
                                         "tech"])
    fixed = saved_model_module.write_export_archive
    runs = {"tfft": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for name, writer in (("baseline", _keras_write), ("tfft", fixed)):
                runs[name].append(measure(task, os.path.join(tmp, f"{name}{i}"), writer))
                print(name, i, {k: round(v, 2) for k, v in runs[name][-1].items()
                                if k != "probabilities"}, file=sys.stderr, flush=True)
    saved_model_module.write_export_archive = fixed
    keys = ("variables_mb", "export_seconds", "load_seconds", "load_peak_rss_mb")
    result = {"model": "all-MiniLM-L6-v2 classifier", "parameters": task.count_params(),
              "runs": args.runs}
    for name in runs:
        result[name] = {k: round(statistics.median(r[k] for r in runs[name]), 2) for k in keys}
    for k in keys:
        result[f"ratio_{k}"] = round(result["tfft"][k] / result["baseline"][k], 3)
    result["max_abs_probability_difference"] = max(
        abs(a - b) for r1, r2 in zip(runs["tfft"], runs["baseline"], strict=True)
        for a, b in zip(r1["probabilities"], r2["probabilities"], strict=True))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
