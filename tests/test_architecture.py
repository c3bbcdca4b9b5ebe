"""The layout docs/architecture.md describes is the layout of the code: layers, sizes, every module listed.

The layers are the design's main rule: a module may import from its own layer and the layers below it,
never from a layer above (lazy imports inside functions count too: a lazy upward import is still a
dependency that runs back up).  A test, so that the document stays true when the code moves.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "recapfast"
DOC = ROOT / "docs" / "architecture.md"

# Bottom to top; a module belongs to the first prefix that matches its dotted name below recapfast.
LAYERS = [
    ("errors",),
    ("io.atomic",),
    ("ops", "runtime", "metrics", "distributed"),
    ("io",),
    ("validate",),
    ("data",),
    ("models",),
    ("attacks",),
    ("reporting",),
    ("engine",),
    ("training",),
    ("reproduction",),
    ("cli", "__init__", "__main__"),
]
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts == ["__init__"] or parts == ["__main__"]:
            name = parts[0]
        elif parts[-1] == "__init__":
            name = ".".join(parts[:-1])
        else:
            name = ".".join(parts)
        out[name] = path
    return out


def _layer(name: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                return level
    raise AssertionError(f"recapfast.{name} belongs to no layer of tests/test_architecture.py")


def _imports(path: Path, name: str) -> set[str]:
    """Every recapfast module `path` imports, as dotted names below recapfast (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name[len("recapfast."):] for a in node.names if a.name.startswith("recapfast.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package not in ("__init__", "") else []
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "recapfast" or node.module.startswith("recapfast.")):
                module = node.module[len("recapfast."):] if node.module != "recapfast" else ""
            else:
                continue
            for alias in node.names:
                # `from recapfast.io import atomic` imports the module io.atomic; `from x.y import f` imports x.y
                found.add(f"{module}.{alias.name}" if module else alias.name)
                if module:
                    found.add(module)
    return found


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def test_no_import_runs_up_a_layer():
    modules = _modules()
    upward = set()
    for name, path in modules.items():
        for target in _imports(path, name):
            resolved = _resolve(target, modules)
            if resolved is None or resolved == "__init__" or _docstring_only(modules[resolved]):
                continue        # a docstring-only package __init__ is not a dependency
            if _layer(resolved) > _layer(name):
                upward.add(f"recapfast.{name} imports recapfast.{resolved}")
    assert not upward, "imports that run up a layer:\n" + "\n".join(sorted(upward))


def test_no_module_is_over_the_size_limit():
    big = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def _documented_paths() -> set[str]:
    text = DOC.read_text()
    block = re.search(r"<!-- layout:begin -->(.*?)<!-- layout:end -->", text, re.S)
    assert block, "docs/architecture.md has no layout block between <!-- layout:begin --> and <!-- layout:end -->"
    paths, stack = set(), []
    for line in block.group(1).splitlines():
        m = re.match(r"^( *)(\S+)", line)
        if not m or m.group(2).startswith(("```", "#")):
            continue
        depth, entry = len(m.group(1)) // 2, m.group(2)
        stack[depth:] = [entry.rstrip("/")]
        if entry.endswith(".py"):
            paths.add("/".join(stack))
    return paths


def _docstring_only(path: Path) -> bool:
    """A subpackage's __init__.py that holds only its docstring (the layout lists its package, not the file)."""
    if path.name != "__init__.py" or path.parent == PKG:
        return False
    body = ast.parse(path.read_text()).body
    return len(body) <= 1 and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def test_subpackage_inits_hold_only_a_docstring():
    # importing a leaf module must not import its siblings (no cycles hidden in package initialisation)
    heavy = [str(p.relative_to(ROOT)) for p in PKG.glob("*/__init__.py")
             if p.parent.name not in ("ops", "cli") and not _docstring_only(p)]
    assert not heavy, f"subpackage __init__.py files with code: {heavy}"


def test_architecture_doc_lists_every_module_and_nothing_else():
    documented = _documented_paths()
    actual = {str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if not _docstring_only(p)}
    assert actual - documented == set(), f"modules missing from docs/architecture.md: {sorted(actual - documented)}"
    assert documented - actual == set(), f"docs/architecture.md lists modules that do not exist: {sorted(documented - actual)}"


def test_layer_check_catches_an_upward_import(tmp_path):
    # the checker itself can fail: a lazy import of the engine inside an attacks module is seen and ranked above it
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from recapfast.engine.evaluate import Evaluator\n")
    assert "engine.evaluate" in _imports(path, "attacks.sweep_helper")
    assert _layer("engine.evaluate") > _layer("attacks.sweep_helper")
