"""The README runs: every ```python block in README.md is executed (issue 16, item 9).

Each block runs as its own script in a fresh Python process, in a temporary
working directory, with `TFFT_README_SMALL=1` in the environment (a block that
would be slow at full size reads it; most are sized to be quick anyway). A block
that fails reports its README line and the traceback with README line numbers.

A block may be skipped only for what this machine lacks (the network, TPUs,
several machines), by an HTML comment right before it:
`<!-- not-run: reason; covered by tests/<file>.py (test_name, ...) -->` naming
the real tests that run the same calls offline; the names are checked here.
"""

import ast
import os
import re
import subprocess
import sys
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "line, source", [(line, source) for line, _, source, _ in RUN_BLOCKS],
    ids=[f"line{line}-{_first_line(source)[:30]}" for line, _, source, _ in RUN_BLOCKS],
)
def test_readme_python_block_runs(line, source, tmp_path):
    script = tmp_path / "readme_block.py"
    script.write_text(source, encoding="utf-8")
    env = dict(
        os.environ,
        TFFT_README_SMALL="1",
        TFFT_FEATURE_CACHE_DIR=str(tmp_path / "feature_cache"),
        MPLBACKEND="Agg",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    work = tmp_path / "work"
    work.mkdir()
    try:
        result = subprocess.run(
            [sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"README.md line {line}: the block ran past {TIMEOUT_S} s")
    if result.returncode != 0:
        output = _readme_traceback(result.stdout[-3000:] + result.stderr[-6000:], script, line)
        pytest.fail(f"README.md line {line}: the block exited with {result.returncode}\n{output}")
