"""The fixed costs every fine-tuning job pays once or twice, each against its old way.

A job spends much of its time outside the training steps: making datasets,
tracing the predict function, writing the export and checking it in a fresh
process. On the real MiniLM (sequence length 64) and 100 BBC News articles,
each part is timed the way tfft does it now and the way it did before, in
the same run, alternating, median over `--runs`:

- `make_dataset_s`: `Task.make_dataset` once the task has made one dataset
  (the preprocessor's trace is reused) vs `make_dataset_retrace_s`, the same
  call with that trace dropped (what every call cost before).
- `predict_s` / `predict_traces`: `Task.predict` on raw texts right after the
  predict function is reset (as `compile` does) vs `keras.Model.predict` on
  the same dataset (`keras_predict_s`, `keras_predict_traces`), which traces
  for the first batch's shape and again for the last, smaller batch.
- `export_s`: `tfft.export_saved_model(..., verify=False)` vs the same export
  written by Keras' plain `ExportArchive.write_out` (`plain_write_out_s`),
  which traces each endpoint twice and each model's default signature.
- `verify_s`: the fresh-process check of that export as tfft runs it (no
  Keras in the process) vs the same check importing `tensorflow_text` as a
  package (`verify_with_keras_s`), as before.

Prints one JSON line with the medians and each ratio (new over old).

    .venv/bin/python benchmarks/job_overheads.py [--runs 3]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import keras
import numpy as np

from tfft.export import saved_model as export_module
from tfft.export.fresh_process import SERVING_IMPORTS

_OLD_IMPORTS = """
import sys, numpy as np
try:
    import tensorflow_text  # noqa: F401
except ImportError:
    pass
import tensorflow as tf
"""


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def _count_predict_traces(task):
    step, traces = task.predict_step, []

    def counted(data):
        traces.append(1)
        return step(data)

    task.predict_step = counted
    return traces


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measurements per figure")
    args = parser.parse_args(argv)

    news = tfft.data.load("bbc_news", split="train").take(range(0, 1500, 15))  # 100
    texts = [str(t) for t in news.x]
    backbone = tfft.load_backbone("minilm", sequence_length=64)
    task = tfft.build_model(backbone, num_classes=5, class_names=news.class_names)
    task.make_dataset(texts[:4])  # the first dataset traces the preprocessor either way
    traces = _count_predict_traces(task)
    times = {name: [] for name in (
        "make_dataset_s", "make_dataset_retrace_s", "predict_s", "keras_predict_s",
        "export_s", "plain_write_out_s", "verify_s", "verify_with_keras_s")}
    counts = {"predict_traces": [], "keras_predict_traces": []}
    verify_tail = export_module._VERIFY_SCRIPT[len(SERVING_IMPORTS):]
    assert export_module._VERIFY_SCRIPT.startswith(SERVING_IMPORTS)

    def plain_write_out(archive, path, concrete_endpoints=False):
        archive.write_out(path, verbose=False)

    def retrace():
        task.__dict__.pop("_preprocess_cache", None)
        task.make_dataset(texts, news.y)

    def keras_predict():
        keras.Model.predict(task, task.make_dataset(texts), verbose=0)

    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            times["make_dataset_s"].append(_timed(task.make_dataset, texts, news.y))
            times["make_dataset_retrace_s"].append(_timed(retrace))
            for key, predict in (("predict", partial(task.predict, texts, verbose=0)),
                                 ("keras_predict", keras_predict)):
                task.predict_function = None  # as compile() leaves it
                del traces[:]
                times[f"{key}_s"].append(_timed(predict))
                counts[f"{key}_traces"].append(len(traces))

            path = os.path.join(tmp, f"export{run}")
            times["export_s"].append(_timed(tfft.export_saved_model, task, path, verify=False))
            written = export_module.write_export_archive
            export_module.write_export_archive = plain_write_out
            try:
                times["plain_write_out_s"].append(_timed(
                    tfft.export_saved_model, task, os.path.join(tmp, f"plain{run}"),
                    verify=False))
            finally:
                export_module.write_export_archive = written

            version, check = os.path.join(path, "1"), texts[:4]
            script = export_module._VERIFY_SCRIPT
            ways = [("verify_s", script), ("verify_with_keras_s", _OLD_IMPORTS + verify_tail)]
            outputs = []
            for name, way in ways if run % 2 == 0 else ways[::-1]:  # alternate the order
                export_module._VERIFY_SCRIPT = way
                try:
                    start = time.perf_counter()
                    outputs.append(
                        export_module.load_serving_outputs_in_fresh_process(version, check))
                    times[name].append(time.perf_counter() - start)
                finally:
                    export_module._VERIFY_SCRIPT = script
            np.testing.assert_allclose(outputs[0]["probabilities"], outputs[1]["probabilities"],
                                       atol=1e-6)

    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    result = {
        "benchmark": "job_overheads",
        "backbone": "minilm",
        "sequence_length": 64,
        "texts": len(texts),
        "runs": args.runs,
        **medians,
        **{name: max(values) for name, values in counts.items()},
        "make_dataset_ratio": round(
            medians["make_dataset_s"] / medians["make_dataset_retrace_s"], 3),
        "predict_ratio": round(medians["predict_s"] / medians["keras_predict_s"], 3),
        "export_ratio": round(medians["export_s"] / medians["plain_write_out_s"], 3),
        "verify_ratio": round(medians["verify_s"] / medians["verify_with_keras_s"], 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
