"""The import graph keeps the layers pointing one way:
orchestrator -> worker, inference -> shm_protocol -> native.
Packages import each other only through their public __init__ re-exports.
A layer may reach past the one below it, never above: orchestrator reads
shm_protocol's records, worker calls native's host functions, and inference
runs native's row programs."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "worker", "inference", "shm_protocol", "native")
ALLOWED = {
    "orchestrator": {"worker", "inference", "shm_protocol"},
    "worker": {"shm_protocol", "native"},
    "inference": {"shm_protocol", "native"},
    "shm_protocol": {"native"},
    "native": set(),
}


def _imports(pkg):
    for path in sorted((ROOT / pkg).rglob("*.py")):
        if path.name.endswith("_build.py") and pkg == "native":
            continue  # the cffi builder runs at install time, outside the package
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                yield path, node.module
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("wasm_engine."):
                yield path, node.module.split(".", 1)[1]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_layers_point_one_way(pkg):
    for path, target in _imports(pkg):
        top = target.split(".")[0]
        assert top in ALLOWED[pkg], f"{path.relative_to(ROOT)} imports {top}: {pkg} may import only {ALLOWED[pkg]}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_reaching_into_private_modules_of_other_packages(pkg):
    for path, target in _imports(pkg):
        parts = target.split(".")
        assert not any(p.startswith("_") for p in parts[1:]), (
            f"{path.relative_to(ROOT)} imports {target}: use the package's public re-exports"
        )
