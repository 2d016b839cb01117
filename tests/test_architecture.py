"""The package's dependency direction: no import cycles, no `import tfft` below the CLI.

`lint-imports` (the contracts in .importlinter) checks the layers in `make test`;
these tests check the same graph from pytest, with grimp, which counts imports
inside functions too.
"""

import json
import subprocess
import sys

import grimp
import pytest


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("tfft", cache_dir=None)


def _cycles(graph):
    """`(a, b, chain)` for each pair of modules that import each other, directly or not."""
    cycles = {}
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            pair = tuple(sorted((module, imported)))
            if imported == module or pair in cycles:
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles[pair] = f"{module} -> " + " -> ".join(back)
    return [(*pair, chain) for pair, chain in sorted(cycles.items())]


def test_no_import_cycles_between_modules(graph):
    cycles = _cycles(graph)
    assert not cycles, "Import cycles (a, b, the chain from b back to a):\n" + "\n".join(
        map(str, cycles)
    )


def test_only_the_cli_imports_the_top_level_package(graph):
    offenders = []
    for importer in sorted(graph.find_modules_that_directly_import("tfft")):
        if importer == "tfft.cli" or importer.startswith("tfft.cli."):
            continue
        for detail in graph.get_import_details(importer=importer, imported="tfft"):
            offenders.append(f"{importer}:{detail['line_number']}: {detail['line_contents']}")
    assert not offenders, (
        "Library code must import the module that defines a name, not `tfft`:\n"
        + "\n".join(offenders)
    )


def test_cycle_check_sees_imports_inside_functions(tmp_path, monkeypatch):
    # The check above is only worth something if a lazy import counts.
    package = tmp_path / "cyclepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclepkg import b\n")
    (package / "b.py").write_text("def f():\n    from cyclepkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = _cycles(grimp.build_graph("cyclepkg", cache_dir=None))
    assert [cycle[:2] for cycle in found] == [("cyclepkg.a", "cyclepkg.b")]


def test_import_tfft_stays_light():
    code = (
        "import json, sys; import tfft; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'tensorflow_datasets' "
        "or m.startswith(('tensorflow_datasets.', 'tfft.prompting', 'tfft.selection')))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import tfft` loaded {loaded}"
