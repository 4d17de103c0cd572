"""Packages import only downward (docs/ARCHITECTURE.md): no package imports one of its own layer or above; the
modules at the root of `unikd` (`registry`) are below every package and import none."""

import ast
from pathlib import Path

import unikd

LAYERS = {"registry": -1, "ops": 0, "data": 1, "models": 2, "evaluation": 2, "utils": 2, "interop": 3, "distill": 3, "exps": 4, "study": 5, "benchmarks": 5}
ROOT = Path(unikd.__file__).parent


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name.split(".")[1] for name in names if name.startswith("unikd.") and name.count(".") >= 1}


def test_every_package_has_a_layer():
    packages = {path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file()}
    modules = {path.stem for path in ROOT.glob("*.py") if path.stem != "__init__"}
    assert packages | modules == set(LAYERS)


def test_imports_go_only_downward():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.name == "__init__.py" and len(relative.parts) < 2:
            continue
        package = relative.parts[0].removesuffix(".py")
        for other in imported_packages(path) - {package}:
            if LAYERS[other] >= LAYERS[package]:
                upward.append(f"{relative} imports unikd.{other}")
    assert not upward, "\n".join(upward)
