"""Imports point one way: a module may import its own layer or an earlier one, never a later.

The layers follow the data (ARCHITECTURE.md): survey -> measurement -> identification ->
estimation -> effects -> report -> cli. The test parses every module of the package (AST,
imports inside functions included) and fails on any import from a later layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pari_bayes

PACKAGE = Path(pari_bayes.__file__).parent

#: Layer of each module, by dotted name prefix (longest prefix wins).
LAYERS = {
    "pari_bayes._paths": 0,
    "pari_bayes._version": 0,
    "pari_bayes.errors": 0,
    "pari_bayes.io": 0,
    "pari_bayes.console": 0,
    "pari_bayes.codebook": 1,
    "pari_bayes.registry": 1,
    "pari_bayes.income": 1,
    "pari_bayes.survey": 1,
    "pari_bayes.privacy": 1,
    "pari_bayes.simulate": 1,
    "pari_bayes.scenarios": 1,
    "pari_bayes.measurement": 2,
    "pari_bayes.identification": 3,
    "pari_bayes.priors": 4,
    "pari_bayes.estimation": 4,
    "pari_bayes.diagnostics": 4,
    "pari_bayes.effects": 4,
    "pari_bayes.sensitivity": 4,
    "pari_bayes.calibration": 5,
    "pari_bayes.workers": 6,
    "pari_bayes.pipeline": 6,
    "pari_bayes.project": 6,
    "pari_bayes.report": 6,
    "pari_bayes.design": 6,
    "pari_bayes.report_figures": 6,
    "pari_bayes.findings": 6,
    "pari_bayes.commands": 7,
    "pari_bayes.cli": 7,
    "pari_bayes.__init__": 8,
    "pari_bayes.__main__": 8,
}
NAMES = [
    "base",
    "survey",
    "measurement",
    "identification",
    "estimation",
    "audit",
    "report",
    "cli",
    "api",
]


def _layer(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            found += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return [(t, n) for t, n in found if t.startswith("pari_bayes")]


def test_every_module_has_a_layer() -> None:
    missing = [_module_name(p) for p in PACKAGE.rglob("*.py") if _layer(_module_name(p)) is None]
    assert not missing, f"add these modules to LAYERS: {missing}"


def test_imports_point_one_way() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        own = _layer(module)
        for target, line in _imports(path, module):
            if target == "pari_bayes" and module.startswith("pari_bayes"):
                if own < LAYERS["pari_bayes.__init__"]:
                    violations.append(f"{path.name}:{line} imports the top-level package")
                continue
            other = _layer(target)
            if other is not None and other > own:
                violations.append(
                    f"{module} ({NAMES[own]}) line {line} imports {target} ({NAMES[other]})"
                )
    assert not violations, "imports from a later layer:\n" + "\n".join(sorted(set(violations)))
