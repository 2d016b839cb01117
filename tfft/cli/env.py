"""`tfft env`: versions, devices, strategy, cache and assets, for a bug report."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys

import tensorflow as tf

from tfft import assets
from tfft.distribute import get_strategy
from tfft.utils.version import __version__

# Distributions reported by `tfft env`: tfft's dependencies and extras.
PACKAGES = (
    "tensorflow", "keras", "keras-hub", "tensorflow-text", "tensorflow-datasets",
    "tensorflow-hub", "tf-keras", "keras-cv", "numpy", "scikit-learn", "gguf", "safetensors",
)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "env", help="versions, devices, strategy, cache and assets (paste into a bug report)",
        description="Print tfft's environment: versions of Python and the packages tfft uses, "
        "the devices TensorFlow sees, the tf.distribute strategy get_strategy('auto') picks, "
        "tfft's cache directory and the offline assets installed.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=run)


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    """The environment as a JSON-ready dict."""
    devices = {
        kind: [d.name for d in tf.config.list_physical_devices(kind)]
        for kind in ("CPU", "GPU", "TPU")
    }
    strategy = get_strategy("auto", verbose=False)
    return {
        "tfft": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "devices": devices,
        "strategy": {
            "name": type(strategy).__name__.lstrip("_"),
            "replicas": strategy.num_replicas_in_sync,
        },
        "cache_dir": assets.cache_dir(),
        "assets": {row["name"]: row["path"] for row in assets.asset_status()},
    }


def run(args):
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"tfft {info['tfft']}, Python {info['python']} on {info['platform']}")
    for name, version in info["packages"].items():
        print(f"  {name:<20} {version or 'not installed'}")
    for kind, names in info["devices"].items():
        print(f"{kind} devices: {', '.join(names) if names else 'none'}")
    strategy = info["strategy"]
    print(f"strategy (auto): {strategy['name']} with {strategy['replicas']} replica(s)")
    print(f"cache directory: {info['cache_dir']}")
    installed = [name for name, path in info["assets"].items() if path]
    missing = [name for name, path in info["assets"].items() if not path]
    print(f"assets installed: {', '.join(installed) or 'none'}")
    if missing:
        print(f"assets missing: {', '.join(missing)} (tfft assets install NAME)")
    return 0
