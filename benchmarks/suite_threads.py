"""The test suite under two pytest-xdist workers: one intra-op thread per core vs all cores.

`tests/conftest.py` gives each worker's TensorFlow its share of the cores for
its intra-op thread pool (`TF_NUM_INTRAOP_THREADS`, 1 per worker with two
workers on 2 cores). This runs the same test folders both ways, alternating,
`--runs` times each, and prints one JSON line: the median wall seconds of
`pytest -n WORKERS` with the share (`shared_s`) and with every process sized
to all cores as before (`all_cores_s`, `TF_NUM_INTRAOP_THREADS` set to the
core count), and their ratio.

    .venv/bin/python benchmarks/suite_threads.py [--runs 2] [--workers 2]
        [--tests tests/freeze tests/feature_cache tests/data tests/training]

Folders whose work splits evenly over the workers show what the full suite
sees; with one much heavier folder the other worker idles, and the busy one
then has one thread where it could have had all.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tests, workers, env):
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers),
         "--dist", "loadscope", "--no-loadscope-reorder", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tests", nargs="+", default=[
        "tests/freeze", "tests/feature_cache", "tests/data", "tests/training"])
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    base = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
    ways = [("shared_s", base), ("all_cores_s", {**base, "TF_NUM_INTRAOP_THREADS": str(cores)})]
    times = {name: [] for name, _ in ways}
    for run in range(args.runs):
        for name, env in ways if run % 2 == 0 else ways[::-1]:  # alternate the order
            times[name].append(round(_run(args.tests, args.workers, env), 1))
            print(f"run {run + 1}/{args.runs}, {name[:-2]}: {times[name][-1]} s", file=sys.stderr)
    medians = {name: round(statistics.median(values), 1) for name, values in times.items()}
    print(json.dumps({
        "benchmark": "suite_threads",
        "tests": args.tests,
        "workers": args.workers,
        "cores": cores,
        "runs": args.runs,
        **medians,
        "each_run_s": times,
        "ratio": round(medians["shared_s"] / medians["all_cores_s"], 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
