"""Each notebook's setup line, run as Colab would on a fresh runtime (issue 23, item 5).

The line (`!pip install ... && tfft assets install ...` in the first code cell) runs
verbatim through the shell in the session's fresh virtual environment, in a folder
holding only the uploaded wheel, as /content would on Colab.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _setup_line(path):
    cells = json.loads(path.read_text())["cells"]
    code = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
    (line,) = [line.strip() for line in code.splitlines() if line.strip().startswith("!pip ")]
    return line[1:]


def test_every_notebook_has_one_setup_line():
    for path in NOTEBOOKS:
        line = _setup_line(path)
        assert line.startswith("pip install -q ") and " && tfft assets install " in line, line


@pytest.mark.slow
def test_setup_lines_install_tfft_and_the_assets_in_a_fresh_venv(fresh_venv, run_fresh):
    # One test for every notebook's line (each distinct line runs once: three notebooks
    # share one): pip is quick once the first has run, and tfft is imported once at the
    # end to find everything.
    content = fresh_venv["root"] / "content"
    content.mkdir(exist_ok=True)
    shutil.copy(fresh_venv["wheel"], content)
    lines = {}
    for path in NOTEBOOKS:
        lines.setdefault(_setup_line(path), []).append(path.name)
    names = set()
    for line, notebooks in lines.items():
        done = run_fresh(line, cwd=content)  # through /bin/sh, as IPython's `!` does
        assert done.returncode == 0, f"{notebooks}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        names.update(line.split(" && tfft assets install ")[1].split())
    code = ("import json, tensorflow_hub, tfft; from tfft import assets; print(json.dumps("
            "[tfft.__file__, tensorflow_hub.__file__] + "
            f"[assets.asset_path(n) for n in {sorted(names)!r}]))")
    where = subprocess.run([str(fresh_venv["python"]), "-c", code], cwd=fresh_venv["work"],
                           env=fresh_venv["env"], capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    # tfft, the hub extra (notebook 03) and every asset the notebooks name, installed into
    # the fresh environment itself.
    for found in json.loads(where.stdout):
        assert Path(found).is_relative_to(fresh_venv["site"]), found
