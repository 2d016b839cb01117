"""The Colab notebooks: committed without outputs, and each runs top to bottom.

Each notebook runs headless (nbclient) in a fresh kernel on this interpreter,
in a temporary working directory, with `TFFT_NOTEBOOK_SMALL=1` so it uses tiny
subsets and one or two epochs. A cell that raises fails the test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tfft  # noqa: F401  selects the TensorFlow backend before Keras loads

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "tfft-test-python"
# tfft has no public home yet: the notebooks say plainly how to open them in Colab.
OPEN_IN_COLAB = "**Open in Colab:** File → Upload notebook"

# Text each executed notebook must print: the step that shows its point ran.
EXPECTED_OUTPUT = {
    "01_text_classification_quickstart": ["macro F1", "exported to", "class_names"],
    "02_image_classification": [
        "--- feature_extraction", "--- top_k", "GradualUnfreezing: epoch 1: unfroze",
    ],
    "03_tf_hub_in_keras3": [
        "Only instances of `keras.Layer`",
        "HubLayer fine-tuned the SavedModel's conv kernel with Adam: True",
        "reloaded from .keras gives the same predictions: True",
    ],
    "04_prompt_learning": [
        "MiniLM zero-shot accuracy", "SmolLM2 few-shot (k=2) accuracy", "soft prompt accuracy",
    ],
    "05_model_selection": ["[medium_data]", "leaderboard winner"],
    "06_tpu_training_and_export": ["tfft strategy:", "exported to"],
}

# Files each notebook writes into its working directory (the test's tmp dir).
EXPECTED_FILES = {
    "01_text_classification_quickstart": [
        "saved_models/bbc_news_minilm/1/saved_model.pb", "plots/training_curves.png",
        "plots/confusion_matrix.png",
    ],
    "02_image_classification": ["curves_gradual.png"],
    "03_tf_hub_in_keras3": ["tiny_image_features/saved_model.pb", "hub_model.keras"],
    "04_prompt_learning": [],
    "05_model_selection": ["leaderboard/leaderboard.png", "leaderboard/leaderboard.csv"],
    "06_tpu_training_and_export": ["saved_models/bbc_news_minilm/1/saved_model.pb"],
}


def _ids(paths):
    return [p.stem for p in paths]


def _committed_text(path):
    """The notebook as committed in git (HEAD), or None outside a git checkout."""
    relative = path.relative_to(ROOT).as_posix()
    try:
        result = subprocess.run(
            ["git", "show", f"HEAD:{relative}"], cwd=ROOT, capture_output=True, text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def test_every_notebook_is_listed_with_its_expected_output():
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(EXPECTED_OUTPUT), (
        f"notebooks in {NOTEBOOK_DIR} and EXPECTED_OUTPUT differ"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_clean_v4_with_colab_badge(path):
    import nbformat

    texts = {"working tree": path.read_text()}
    committed = _committed_text(path)
    if committed is not None:
        texts["git HEAD"] = committed
    for where, text in texts.items():
        raw = json.loads(text)
        assert raw["nbformat"] == 4, where
        for index, cell in enumerate(raw["cells"]):
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [], f"{where}: cell {index} has outputs"
                assert cell.get("execution_count") is None, (
                    f"{where}: cell {index} has an execution_count"
                )
    nb = nbformat.reads(texts["working tree"], as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith(OPEN_IN_COLAB), "the first cell must say how to open it"
    # No badge or link to a made-up repository (OWNER): it would open nothing.
    assert "OWNER" not in texts["working tree"] and "colab-badge" not in first.source
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import tfft" in code and "TFFT_NOTEBOOK_SMALL" in code
    setup = next(c for c in nb.cells if c.cell_type == "code").source
    # One pip line installs tfft and the assets (run in a fresh venv by
    # tests/packaging/test_notebook_setup.py); guarded so this .venv is left alone.
    assert len([line for line in setup.splitlines() if "!pip install" in line]) == 1
    assert "tfft assets install" in setup


@pytest.fixture(scope="session")
def kernel_env(tmp_path_factory):
    """A kernel spec for this interpreter, found through JUPYTER_PATH.

    The notebooks must run on the interpreter running the tests (the project's
    .venv), whatever kernels the machine has registered.
    """
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tfft tests",
        "language": "python",
    }))
    env = {
        "JUPYTER_PATH": os.pathsep.join(
            [str(jupyter_dir)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
                                  if p]
        ),
        # The checkout's tfft, even when the venv holds a non-editable install.
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
        "TFFT_NOTEBOOK_SMALL": "1",
        "MPLBACKEND": "Agg",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return env


def _outputs_text(nb):
    chunks = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                chunks.append(output["text"])
            for key in ("text/plain",):
                if key in output.get("data", {}):
                    chunks.append(output["data"][key])
    return "\n".join(chunks)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(path, kernel_env, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, kernel_name=KERNEL_NAME, timeout=600, startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    text = _outputs_text(nb)
    for expected in EXPECTED_OUTPUT.get(path.stem, []):
        assert expected in text, f"{path.name}: expected {expected!r} in its outputs"
    # The notebook wrote its files into its working directory, not the checkout.
    for relative in EXPECTED_FILES[path.stem]:
        assert (tmp_path / relative).is_file(), f"{path.name}: {relative} was not written"
