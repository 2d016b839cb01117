"""Import time of tfft: `import tfft`, the core path, and TensorFlow + Keras as a baseline.

Each figure is the median over `--runs` fresh Python processes (nothing is
cached in memory between them), measured in the same run so load on a shared
machine falls on all alike; the runs of the three kinds alternate.

- `import_tfft_s`: `import tfft`.
- `core_s`: `import tfft; tfft.build_model` (the attribute access loads the core:
  backbones, layers, adaptation, training, models).
- `baseline_s`: `import tensorflow, keras`, which the core cannot avoid.

Prints one JSON line with the three medians and the ratios to the baseline.
`--repo PATH` measures another checkout (PATH goes first on PYTHONPATH).

    .venv/bin/python benchmarks/import_time.py [--runs 7] [--repo /path/to/checkout]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SNIPPETS = {
    "import_tfft_s": "import tfft",
    "core_s": "import tfft; tfft.build_model",
    "baseline_s": "import tensorflow, keras",
}

_TIMER = (
    "import time, os\n"
    "os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')\n"
    "start = time.perf_counter()\n"
    "{code}\n"
    "print('SECONDS', time.perf_counter() - start)\n"
)


def time_once(code, repo):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    out = subprocess.run(
        [sys.executable, "-c", _TIMER.format(code=code)], cwd=repo, env=env,
        capture_output=True, text=True, timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{code!r} failed in {repo}:\n{out.stderr[-2000:]}")
    line = [row for row in out.stdout.splitlines() if row.startswith("SECONDS ")][-1]
    return float(line.split()[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per figure")
    parser.add_argument("--repo", default=REPO, help="checkout to measure (default: this one)")
    args = parser.parse_args(argv)
    repo = os.path.abspath(args.repo)
    times = {name: [] for name in SNIPPETS}
    for _ in range(args.runs):
        for name, code in SNIPPETS.items():
            times[name].append(time_once(code, repo))
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    result = {
        "repo": repo,
        "runs": args.runs,
        **medians,
        "import_tfft_vs_baseline": round(medians["import_tfft_s"] / medians["baseline_s"], 3),
        "core_vs_baseline": round(medians["core_s"] / medians["baseline_s"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
