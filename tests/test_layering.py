"""The import graph of the project's modules, read with ``ast`` (nothing is imported): no import
circle, type-only (``TYPE_CHECKING``) and function-level imports included, and no module importing
another package's private (``_x``) module. Tests count as the package they mirror
(``tests/stages/`` may import ``stages._graph``; ``tests/search/`` may not). A package with a face
(``FACES``) is imported through it from outside: mcaas-search's own modules import only the face's
names, and a test imports from a module behind the face only what the face does not export."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("objectives", "stages", "spaces", "search")
# Packages whose ``__init__`` lists in ``__all__`` what code outside them imports.
FACES = ("search.workloads",)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path, folders: tuple[str, ...]) -> dict[str, Path]:
    return {module_name(p, root): p for folder in folders for p in sorted((root / folder).rglob("*.py"))}


def imported(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The project modules ``name`` (at ``path``) imports anywhere in its source: ``from a
    import b`` counts as importing the module ``a.b`` when there is one, else ``a``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = from_base(node, name, path)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def from_base(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The absolute module ``node`` (in module ``name`` at ``path``) imports from."""
    if not node.level:
        return str(node.module)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    return ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports(importer: str, targets: set[str]) -> Iterator[str]:
    """The private modules among ``targets`` that lie outside ``importer``'s package."""
    owner = importer.removeprefix("tests.")  # a test counts as the package it mirrors
    for target in sorted(targets):
        parent, _, leaf = target.rpartition(".")
        inside = owner == parent or owner.startswith(f"{parent}.")
        if leaf.startswith("_") and not leaf.startswith("__") and not inside:
            yield target


def exported(face: str, known: Mapping[str, Path]) -> set[str]:
    """The names the package ``face`` lists in its ``__init__``'s ``__all__``."""
    for node in ast.parse(known[face].read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def face_bypasses(name: str, path: Path, known: Mapping[str, Path], face: str) -> Iterator[str]:
    """Where ``name`` (at ``path``), outside the package ``face``, goes around the face: any
    import of a module behind it, or, from a test (which may reach a name under test that the
    face does not export), a name the face exports imported from a module behind it."""
    if name == face or name.startswith(f"{face}."):
        return
    test = name.startswith("tests.")
    names = exported(face, known)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and not test:
            yield from (f"{name} imports {a.name}" for a in node.names if a.name.startswith(f"{face}."))
        elif isinstance(node, ast.ImportFrom):
            base = from_base(node, name, path)
            for alias in node.names:
                module = base == face and f"{face}.{alias.name}" in known  # `from face import module`
                behind = base.startswith(f"{face}.") and (not test or alias.name in names)
                if behind or (module and not test):
                    yield f"{name} imports {alias.name} from {base}"


def test_no_module_imports_itself_through_a_circle() -> None:
    known = project_modules(ROOT, PACKAGES)
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert cycles(graph) == []


def test_no_module_imports_another_packages_private_module() -> None:
    known = project_modules(ROOT, (*PACKAGES, "tests"))
    found = [
        f"{name} imports {target}"
        for name, path in known.items()
        for target in private_imports(name, imported(name, path, known))
    ]
    assert found == []


def test_no_module_goes_around_a_package_face() -> None:
    known = project_modules(ROOT, (*PACKAGES, "tests"))
    found = [
        bypass
        for face in FACES
        for name, path in known.items()
        for bypass in face_bypasses(name, path, known, face)
    ]
    assert found == []


def _write(root: Path, files: Mapping[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return project_modules(root, ("a", "b"))


@pytest.mark.parametrize(
    "files",
    [
        {"a/__init__.py": "", "a/x.py": "from a.y import f\n", "a/y.py": "from a import x\n"},
        {  # type-only and relative
            "a/__init__.py": "",
            "a/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .y import T\n",
            "a/y.py": "def f():\n    import a.x\n",
        },
    ],
    ids=["plain", "type-only"],
)
def test_the_checks_see_a_circle(tmp_path: Path, files: dict[str, str]) -> None:
    known = _write(tmp_path, files)
    assert cycles({n: imported(n, p, known) for n, p in known.items()}) == [["a.x", "a.y"]]


def test_the_checks_see_a_private_import_across_packages(tmp_path: Path) -> None:
    known = _write(tmp_path, {"a/__init__.py": "", "a/_p.py": "", "a/q.py": "from a._p import f\n",
                              "b/__init__.py": "", "b/r.py": "from a import _p\n"})
    assert [list(private_imports(n, imported(n, p, known))) for n, p in sorted(known.items())] == [
        [], [], [], [], ["a._p"]
    ]


def test_the_checks_see_an_import_around_a_face(tmp_path: Path) -> None:
    known = _write(tmp_path, {
        "a/__init__.py": "from a.inner import f, g\n__all__ = ['f']\n",
        "a/inner.py": "def f(): pass\ndef g(): pass\ndef h(): pass\n",
        "b/__init__.py": "",
        "b/face.py": "from a import f\n",
        "b/around.py": "from a.inner import f\n",
        "b/module.py": "def run():\n    import a.inner\n",
        "b/through.py": "from a import inner\n",
        "b/unlisted.py": "from a.inner import h\n",
    })
    (tmp_path / "tests").mkdir()
    for test, text in {"face": "from a import f\n", "around": "from a.inner import f, h\n",
                       "module": "from a import inner\n", "unlisted": "from a.inner import h\n"}.items():
        known[f"tests.test_{test}"] = tmp_path / "tests" / f"test_{test}.py"
        known[f"tests.test_{test}"].write_text(text)
    found = {n: list(face_bypasses(n, p, known, "a")) for n, p in known.items()}
    assert found == {
        "a": [], "a.inner": [], "b": [], "b.face": [],
        "b.around": ["b.around imports f from a.inner"],
        "b.module": ["b.module imports a.inner"],
        "b.through": ["b.through imports inner from a"],
        "b.unlisted": ["b.unlisted imports h from a.inner"],
        "tests.test_face": [], "tests.test_module": [], "tests.test_unlisted": [],
        "tests.test_around": ["tests.test_around imports f from a.inner"],
    }  # fmt: skip
