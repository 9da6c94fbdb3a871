"""No module of the package uses another module's private names (docs/architecture.md, "Layout").

A private name is one that starts with ``_`` and is not a dunder (``__name__``, ``__init__``: those
belong to Python). What counts as a crossing, module by module over every ``.py`` file of
``explorer/``:

1. an import of a private name from another module of the package:
   ``from explorer.x import _name`` or the relative ``from .x import _name``;
2. a private attribute of another module of the package, reached through a name bound to that
   module: ``import explorer.x as m; m._name``, ``from explorer import x; x._name``;
3. a private attribute reached through any other object (``self.store._write()``,
   ``obj._helper``), when the name is defined in another module of the package and not in this
   one. "Defined" means a module-level function, class or assignment, a method or class-level
   assignment of one of its classes, or an assignment to ``self._name``. ``self._x`` and
   ``cls._x`` are a class's own business and never count.

``getattr(obj, "_name")``, ``hasattr`` and ``setattr`` with a literal private name count as the
attribute ``obj._name`` (rules 2 and 3).

Private names only the standard library or third-party packages define (``torch._C``,
transformers' ``config._attn_implementation``, omegaconf's ``node._get_node``) are outside this
test: they are other projects' contracts, not ours. What two modules share is made public in one
of them.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "explorer"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(package: Path) -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p, package): (p, ast.parse(p.read_text(), str(p))) for p in sorted(package.rglob("*.py"))}


def absolute(importer: str, path: Path, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved against ``importer``."""
    if not node.level:
        return node.module or ""
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def defined_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines (see the module docstring, rule 3)."""
    names: set[str] = set()

    def targets(node: ast.AST) -> list[ast.expr]:
        if isinstance(node, ast.Assign):
            return list(node.targets)
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            return [node.target]
        return []

    def body_names(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            for t in targets(node):
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)

    body_names(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            body_names(node.body)
        for t in targets(node):
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                names.add(t.attr)
    return {n for n in names if is_private(n)}


def attribute_uses(tree: ast.Module) -> list[tuple[ast.AST, ast.expr, str]]:
    """``(node, object, name)`` of every private attribute reached: ``obj._name`` and
    ``getattr`` / ``hasattr`` / ``setattr(obj, "_name", ...)``."""
    uses: list[tuple[ast.AST, ast.expr, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            uses.append((node, node.value, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and is_private(node.args[1].value)):
            uses.append((node, node.args[0], node.args[1].value))
    return uses


def crossings(package: Path = PACKAGE) -> list[str]:
    mods = modules(package)
    defined = {name: defined_private_names(tree) for name, (_, tree) in mods.items()}
    found: list[str] = []
    for name, (path, tree) in mods.items():
        where = path.relative_to(package.parent)
        module_aliases: dict[str, str] = {}  # local name -> a module of the package it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = absolute(name, path, node)
                if source != "explorer" and not source.startswith("explorer."):
                    continue
                for alias in node.names:
                    if is_private(alias.name) and source != name:
                        found.append(f"{where}:{node.lineno}: from {source} import {alias.name}")
                    if f"{source}.{alias.name}" in mods:
                        module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods and alias.asname:
                        module_aliases[alias.asname] = alias.name
        for node, value, attr in attribute_uses(tree):
            if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                continue
            if isinstance(value, ast.Name) and value.id in module_aliases:
                if module_aliases[value.id] != name:
                    found.append(f"{where}:{node.lineno}: {value.id}.{attr} "
                                 f"(a private name of {module_aliases[value.id]})")
                continue
            dotted = ast.unparse(value)
            if dotted in mods and dotted != name:  # explorer.x.y._name through `import explorer.x.y`
                found.append(f"{where}:{node.lineno}: {dotted}.{attr}")
                continue
            owners = sorted(other for other, names in defined.items() if attr in names and other != name)
            if owners and attr not in defined[name]:
                found.append(f"{where}:{node.lineno}: {dotted}.{attr} (a private name of {', '.join(owners)})")
    return found


def test_no_module_uses_another_modules_private_names():
    found = crossings()
    assert not found, "private names used across modules (make the shared thing public in one place):\n" + \
        "\n".join(found)


def test_the_walk_sees_each_kind_of_crossing(tmp_path):
    """The three rules fire on a small package of their own (so the test above can fail)."""
    pkg = tmp_path / "explorer"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "store.py").write_text(
        "def _helper():\n    pass\n\nclass Store:\n    def _write(self):\n        self._own = 1\n"
        "    def write(self):\n        return self._write()\n__version__ = 1\n")
    (pkg / "data" / "queue.py").write_text(
        "from explorer.data.store import _helper, Store, __version__\nfrom .store import _helper as h\n"
        "import explorer.data.store as st\nfrom explorer.data import store\n\n"
        "def f(s: Store):\n    st._helper()\n    store._helper()\n    s._write()\n    s._own\n"
        "    s._unknown_to_us\n    s.__class__\n    getattr(store, '_helper', None)\n")
    found = crossings(pkg)
    text = "\n".join(found)
    assert "from explorer.data.store import _helper" in text  # rule 1, absolute and relative
    assert sum("import _helper" in line for line in found) == 2
    assert "st._helper" in text and "store._helper" in text  # rule 2
    assert "s._write" in text and "s._own" in text  # rule 3: a method, a self attribute
    assert "_unknown_to_us" not in text and "__class__" not in text and "__version__" not in text
    assert "getattr" not in text and sum("store._helper" in line for line in found) == 2  # getattr counts too
    assert len(found) == 7, text
