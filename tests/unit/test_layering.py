"""The shape of the code (``../shared/DESIGN.md``): dependencies point one way,
``scripts -> jobs -> service -> cache, storage``, and no project import hides in a function
body to dodge a cycle. Read from the source, so a new upward import fails here first."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "service", "cache", "storage")
# What each package may import from the project (itself always).
ALLOWED = {
    "jobs": {"service", "cache", "storage"},
    "service": {"cache", "storage"},
    "cache": {"storage"},
    "storage": set(),
}
# Function-level imports with a reason other than a cycle: the app factory imports the
# app's modules after gunicorn.conf.py / web.py set PROMETHEUS_MULTIPROC_DIR.
LATE_IMPORTS_ALLOWED = {"service/__init__.py"}


def _modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            if "migrations" not in p.parts]


def _imports(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node, node.module))
        elif isinstance(node, ast.Import):
            out += [(node, alias.name) for alias in node.names]
    return out


def test_dependencies_point_one_way():
    upward = []
    for path in _modules():
        pkg = path.relative_to(ROOT).parts[0]
        for node, module in _imports(ast.parse(path.read_text())):
            top = module.split(".")[0]
            if top in PACKAGES and top != pkg and top not in ALLOWED[pkg]:
                upward.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {module}")
    assert not upward, "\n".join(upward)


def test_no_project_import_inside_a_function():
    late = []
    for path in _modules():
        rel = str(path.relative_to(ROOT))
        if rel in LATE_IMPORTS_ALLOWED:
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node, module in _imports(fn):
                if module.split(".")[0] in PACKAGES:
                    late.append(f"{rel}:{node.lineno} imports {module} in {fn.name}()")
    assert not late, "\n".join(late)


def test_one_lease_and_no_raw_lua_outside_the_cache_core():
    """Leases, waits and scripts live in cache/lease.py and cache/scripts.py."""
    offenders = []
    for path in _modules():
        rel = str(path.relative_to(ROOT))
        text = path.read_text()
        if (".eval(" in text or "evalsha(" in text) and rel != "cache/scripts.py":
            offenders.append(f"{rel}: raw EVAL")
        if "== ARGV[1] then return redis.call('DEL'" in text and rel != "cache/lease.py":
            offenders.append(f"{rel}: a release script of its own")
        if "time.sleep(" in text and rel.startswith(("cache/", "service/")) \
                and rel != "cache/lease.py":
            offenders.append(f"{rel}: a wait loop of its own")
    assert not offenders, "\n".join(offenders)


def _imported(path: Path) -> set[str]:
    return {module for _, module in _imports(ast.parse(path.read_text()))}


def test_use_cases_take_the_app_state_and_know_no_flask():
    """``*_ops.py`` modules are plain functions of their parameters: no ``state()``
    global, no Flask request or app context."""
    offenders = []
    for path in sorted((ROOT / "service").glob("*_ops.py")):
        for module in sorted(_imported(path)):
            if module == "service.state" or module.split(".")[0] == "flask":
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_only_routes_and_cli_commands_read_the_state_global():
    """``service.state`` is the route layer's accessor: a module that imports it defines
    routes (a ``Blueprint``) or CLI commands (``cli.py``)."""
    offenders = []
    for path in _modules():
        rel = path.relative_to(ROOT)
        if "service.state" not in _imported(path) or rel == Path("service/state.py"):
            continue
        if path.name != "cli.py" and "Blueprint(" not in path.read_text():
            offenders.append(str(rel))
    assert not offenders, "\n".join(offenders)
