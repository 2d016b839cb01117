"""The README runs: every ```python block in README.md is executed (issue 16, item 9).

The blocks run in README order in one Python process (TensorFlow starts once),
each as its own `__main__` script (`runpy`, fresh globals) in its own temporary
working directory and feature cache folder, with `TFFT_README_SMALL=1` in the
environment; between blocks the Keras session is cleared. A block that fails
reports its README line and the traceback with README line numbers; a block that
kills the process or runs past the time limit is named by its line, and the blocks
after it go on in a new process.

A block may be skipped only for what this machine lacks (the network, TPUs,
several machines), by an HTML comment right before it:
`<!-- not-run: reason; covered by tests/<file>.py (test_name, ...) -->` naming
the real tests that run the same calls offline; the names are checked here.
"""

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>.*?)\s*-->", re.DOTALL)
# The only reasons a block may be skipped: hardware or network this machine lacks.
ALLOWED_REASONS = re.compile(r"network|download|tfhub|internet|\bTPU|machines", re.IGNORECASE)
TIMEOUT_S = 900


def readme_blocks(text):
    """`[(line, kind, source, not_run_reason)]` for every fenced block of README text.

    `line` is the README line (1-based) of the block's first source line.
    """
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = re.match(r"^\s*```(\w*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        kind, start = opening.group(1), index + 1
        end = start
        while end < len(lines) and not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"README.md line {index + 1}: unclosed ``` block")
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = NOT_RUN.search(previous)
        indent = len(lines[index]) - len(lines[index].lstrip())
        source = "\n".join(line[indent:] for line in lines[start:end]) + "\n"
        blocks.append((start + 1, kind, source, marker.group("reason") if marker else None))
        index = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON_BLOCKS = [block for block in BLOCKS if block[1] == "python"]
RUN_BLOCKS = [block for block in PYTHON_BLOCKS if block[3] is None]


def _first_line(source):
    return next(line.strip() for line in source.splitlines() if line.strip())


def _readme_traceback(output, script, first_line):
    """Rewrites `File ".../block.py", line K` as the README line it came from."""

    def replace(match):
        return f'README.md, line {first_line + int(match.group(1)) - 1}'

    return re.sub(rf'File "{re.escape(str(script))}", line (\d+)', replace, output)


def test_the_readme_has_python_blocks_and_each_parses():
    assert len(RUN_BLOCKS) >= 10, "README.md lost its runnable examples"
    for line, _, source, _ in PYTHON_BLOCKS:
        try:
            ast.parse(source)
        except SyntaxError as error:
            pytest.fail(f"README.md line {line + (error.lineno or 1) - 1}: {error.msg}")


def test_not_run_blocks_are_only_network_or_hardware_and_name_real_tests():
    for line, kind, _, reason in BLOCKS:
        if reason is None:
            continue
        assert kind == "python", f"README.md line {line}: not-run marks a {kind or 'plain'} block"
        assert ALLOWED_REASONS.search(reason), (
            f"README.md line {line}: a block may be skipped only for the network, TPUs or "
            f"several machines. Received: not-run: {reason}"
        )
        files = re.findall(r"tests/[\w/]+\.py", reason)
        assert files, f"README.md line {line}: name the tests that cover the block: {reason}"
        sources = []
        for name in files:
            path = ROOT / name
            assert path.is_file(), f"README.md line {line}: {name} does not exist"
            sources.append(path.read_text(encoding="utf-8"))
        for test_name in re.findall(r"\btest_\w+", re.sub(r"tests/[\w/]+\.py", "", reason)):
            assert any(f"def {test_name}(" in text for text in sources), (
                f"README.md line {line}: no test named {test_name} in {files}"
            )


def test_a_fresh_machine_needs_exactly_make_demo_and_make_test():
    setup = README.read_text(encoding="utf-8").split("## Set up and run", 1)[1].split("\n## ")[0]
    commands = [
        line.split("#")[0].strip()
        for _, kind, source, _ in readme_blocks(setup) if kind == "bash"
        for line in source.splitlines() if line.split("#")[0].strip()
    ]
    assert commands == ["make demo", "make test"]


def test_readme_names_no_removed_api():
    text = README.read_text(encoding="utf-8")
    removed = ["tfft.finetune(", "FinetuneConfig", "tfft_backbone", "tfft.select(",
               "tfft.recommend(", "tfft.strategy", "from tfft.finetune", "tfft.feature_cache.",
               "tfft.evaluation import default_callbacks", "tfft.global_batch_size"]
    for name in removed:
        assert name not in text, f"README.md still uses the removed name {name!r}"


# Runs the blocks of a plan (a JSON list) in order, in this one process. Each block's
# output (Python and TensorFlow's C++ logs alike) goes to its own file; a JSON line in
# the progress file marks each block's start and end, so that the parent can name a
# block that killed the process or hung.
_RUNNER = r"""
import gc, json, os, runpy, sys, time, traceback

plan, progress_path = json.load(open(sys.argv[1])), sys.argv[2]

def mark(line, event):
    with open(progress_path, "a") as progress:
        cpu = sum(os.times()[:4])  # this process's and its children's CPU seconds
        progress.write(json.dumps({"line": line, "event": event, "time": time.time(),
                                   "cpu": cpu}) + "\n")

for block in plan:
    os.chdir(block["work"])
    os.environ["TFFT_FEATURE_CACHE_DIR"] = block["feature_cache"]
    sys.stdout.flush(); sys.stderr.flush()
    log = os.open(block["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1); os.dup2(log, 2)
    mark(block["line"], "start")
    event = "passed"
    try:
        runpy.run_path(block["script"], run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            traceback.print_exc()
            event = "failed"
    except BaseException:
        traceback.print_exc()
        event = "failed"
    sys.stdout.flush(); sys.stderr.flush()
    os.close(log)
    mark(block["line"], event)
    # What a fresh process would not carry over: Keras names and graphs, open figures.
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    gc.collect()
"""


def _run_blocks(blocks, root):
    """Runs README blocks in order in one process; `{line: (event, output, script)}`.

    `event` is "passed", "failed", "crashed" (the process died during the block) or
    "timeout"; after a crash or a timeout the remaining blocks go on in a new process.
    """
    plan = []
    for line, source in blocks:
        folder = root / f"line{line}"
        (folder / "work").mkdir(parents=True)
        script = folder / "readme_block.py"
        script.write_text(source, encoding="utf-8")
        plan.append({"line": line, "script": str(script), "work": str(folder / "work"),
                     "feature_cache": str(folder / "feature_cache"),
                     "output": str(folder / "output.txt")})
    env = dict(
        os.environ,
        TFFT_README_SMALL="1",
        MPLBACKEND="Agg",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    results, attempt = {}, 0
    while len(results) < len(plan):
        attempt += 1
        remaining = [block for block in plan if block["line"] not in results]
        plan_path, progress_path = root / f"plan{attempt}.json", root / f"progress{attempt}.txt"
        plan_path.write_text(json.dumps(remaining), encoding="utf-8")
        progress_path.touch()
        with open(root / f"runner{attempt}.log", "w") as runner_log:
            proc = subprocess.Popen(
                [sys.executable, "-c", _RUNNER, str(plan_path), str(progress_path)],
                cwd=root, env=env, stdout=runner_log, stderr=subprocess.STDOUT,
            )
            running, started = None, time.monotonic()
            while True:
                code = proc.poll()
                for event in map(json.loads, progress_path.read_text().splitlines()):
                    if event["event"] == "start":
                        if running != event["line"] and event["line"] not in results:
                            running, started = event["line"], time.monotonic()
                    elif event["line"] not in results:
                        results[event["line"]] = event["event"]
                        running = None if running == event["line"] else running
                if code is not None:
                    break
                if running is not None and time.monotonic() - started > TIMEOUT_S:
                    proc.kill()
                    proc.wait()
                    results[running] = "timeout"
                    break
                time.sleep(0.5)
        if code is not None and len(results) < len(plan):
            # The process died: during the block it had started, or before any.
            died_in = running or next(b["line"] for b in remaining if b["line"] not in results)
            results[died_in] = f"crashed (exit code {code})"
            if running is None:
                results[died_in] += "\n" + (root / f"runner{attempt}.log").read_text()[-3000:]
    # Wall and CPU seconds per block, for whoever trims the README's run time (CPU
    # seconds compare across machine loads): <tmp>/durations.json.
    started, seconds = {}, {}
    for progress in sorted(root.glob("progress*.txt")):
        for event in map(json.loads, progress.read_text().splitlines()):
            if event["event"] == "start":
                started[event["line"]] = event
            elif event["line"] in started:
                start = started[event["line"]]
                seconds[event["line"]] = {"wall": round(event["time"] - start["time"], 1),
                                          "cpu": round(event["cpu"] - start["cpu"], 1)}
    (root / "durations.json").write_text(json.dumps(seconds, indent=1), encoding="utf-8")
    by_line = {block["line"]: block for block in plan}
    return {
        line: (event, Path(by_line[line]["output"]).read_text(errors="replace")
               if Path(by_line[line]["output"]).exists() else "", by_line[line]["script"])
        for line, event in results.items()
    }


@pytest.fixture(scope="module")
def readme_runs(request, tmp_path_factory):
    """The selected README blocks, run once in order; `{line: (event, output, script)}`."""
    selected = {item.callspec.params["line"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_readme_python_block_runs"}
    blocks = [(line, source) for line, _, source, _ in RUN_BLOCKS if line in selected]
    return _run_blocks(blocks, tmp_path_factory.mktemp("readme"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "line, source", [(line, source) for line, _, source, _ in RUN_BLOCKS],
    ids=[f"line{line}-{_first_line(source)[:30]}" for line, _, source, _ in RUN_BLOCKS],
)
def test_readme_python_block_runs(line, source, readme_runs):
    event, output, script = readme_runs[line]
    if event == "timeout":
        pytest.fail(f"README.md line {line}: the block ran past {TIMEOUT_S} s")
    if event != "passed":
        output = _readme_traceback(output[-9000:], script, line)
        pytest.fail(f"README.md line {line}: the block {event}\n{output}")


def test_the_runner_names_a_failing_or_crashing_block_and_goes_on(tmp_path):
    blocks = [
        (10, "import pathlib\npathlib.Path('made.txt').write_text('x')\nprint('ten')\n"),
        (20, "import pathlib\nassert not pathlib.Path('made.txt').exists()\nx = 1\n"
             "raise ValueError('block twenty')\n"),
        (30, "print('x' in globals())\nimport os\nos._exit(3)\n"),
        (40, "import os\nprint('forty', os.path.basename(os.environ['TFFT_FEATURE_CACHE_DIR']))\n"),
    ]
    results = _run_blocks(blocks, tmp_path)
    assert {line: event for line, (event, _, _) in results.items()} == {
        10: "passed", 20: "failed", 30: "crashed (exit code 3)", 40: "passed"}
    # Each block has its own folder, globals and output; a traceback names README lines.
    assert results[10][1] == "ten\n"
    _, output, script = results[20]
    assert "ValueError: block twenty" in output
    assert "README.md, line 23" in _readme_traceback(output, script, 20)
    assert results[30][1] == "False\n"
    assert results[40][1] == "forty feature_cache\n"
