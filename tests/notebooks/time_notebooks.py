"""Runs notebooks as the test does (TFFT_NOTEBOOK_SMALL=1) and prints seconds per cell.

Usage: .venv/bin/python tests/notebooks/time_notebooks.py [notebooks/NAME.ipynb ...]
Prints one JSON object (notebook -> total seconds) on its last line.
"""

import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _seconds(cell):
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = datetime.datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def main(paths):
    import nbformat
    from nbclient import NotebookClient

    paths = [Path(p) for p in paths] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    totals = {}
    with tempfile.TemporaryDirectory() as jupyter_dir:
        spec_dir = Path(jupyter_dir) / "kernels" / "tfft-time"
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "tfft timing", "language": "python",
        }))
        os.environ.update(JUPYTER_PATH=jupyter_dir, TFFT_NOTEBOOK_SMALL="1", MPLBACKEND="Agg",
                          TF_CPP_MIN_LOG_LEVEL="2",
                          PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            with tempfile.TemporaryDirectory() as cwd:
                started = datetime.datetime.now()
                NotebookClient(nb, kernel_name="tfft-time", timeout=600,
                               resources={"metadata": {"path": cwd}}).execute()
                total = (datetime.datetime.now() - started).total_seconds()
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    first = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
                    print(f"{path.stem} cell {index:2d} {_seconds(cell):7.1f} s  {first}")
            print(f"{path.stem} total {total:.1f} s")
            if os.environ.get("TFFT_NOTEBOOK_SAVE"):  # keep the executed copy to read
                nbformat.write(nb, os.path.join(os.environ["TFFT_NOTEBOOK_SAVE"], path.name))
            totals[path.stem] = round(total, 1)
    print(json.dumps(totals))


if __name__ == "__main__":
    main(sys.argv[1:])
