"""DESIGN.md's layering, checked: the tree is the map, imports point down, pure layers do no I/O.

Every module has a layer; a module imports only modules of lower layers (edges may import
edges). Each private folder is one concern with a docstring that says what belongs there
and what it may import; FOLDER_IMPORTS states the same rule as data.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import elastic_healthcheck

PACKAGE_DIR = Path(elastic_healthcheck.__file__).parent

# Bottom first. A module imports only modules of a lower layer (edges may import edges).
LAYERS: list[tuple[str, list[str]]] = [
    ("logging helper", ["log_level"]),
    ("logging helper", ["logging"]),
    ("status", ["status"]),
    ("configuration: the settings table", ["_config.settings"]),
    ("configuration: kinds by name", ["_config", "_config.kinds"]),
    ("configuration: typed options", ["_config.options"]),
    ("torch-identical base", ["health_check_server"]),
    ("progress helpers", ["progress"]),
    (
        "wire formats and records (pure, or one small file)",
        ["_http.wire", "_http.prometheus", "_tcp.line", "_torchrun.record", "_torchrun.stacks"],
    ),
    ("a rank's phases (worker side)", ["_torchrun.phases"]),
    ("the torchrun families for /metrics (pure)", ["_torchrun.metrics"]),
    ("a rank's state and the words about ranks (pure)", ["_torchrun.ranks"]),
    ("who is blamed (pure)", ["_torchrun.blame"]),
    ("the torchrun verdict (pure)", ["_torchrun.verdict"]),
    ("engine: protocol interface", ["_engine.protocol"]),
    (
        "engine: listeners, loop, evaluator",
        ["_engine.listeners", "_engine.loop", "_engine.evaluator"],
    ),
    ("engine: transport", ["_engine.transport"]),
    ("engine: making room for connections", ["_engine.accepting"]),
    ("engine: verdicts", ["_engine.verdicts"]),
    ("engine: a running server's parts", ["_engine.engine"]),
    ("engine: the server base", ["_engine", "_engine.server"]),
    ("protocols", ["_http.protocol", "_tcp.protocol"]),
    ("servers", ["_http", "_http.server", "_tcp", "_tcp.server"]),
    (
        "edges",
        [
            "_cli",
            "_cli.main",
            "_cli.probe",
            "worker",
            "_torchrun",
            "_torchrun.bootstrap",
            "_torchrun.hooks",
            "_torchrun.agentstate",
            "_torchrun.agentserver",
            "_torchrun.hangwatch",
            "_torchrun.jobview",
            "_torchrun.plugin",
            "_torchrun.rootcause",
            "_torchrun.seam",
            "_torchrun.spawn",
            "torchelastic",
            "__init__",
            "__main__",
        ],
    ),
]
RANK = {module: rank for rank, (_name, modules) in enumerate(LAYERS) for module in modules}
EDGES = RANK["_cli"]

# What each private folder may import from the rest of the package (besides itself).
FOLDER_IMPORTS: dict[str, set[str]] = {
    "_config": {"logging"},
    "_engine": {"status", "logging", "health_check_server"},
    "_http": {"_engine", "status", "logging"},
    "_tcp": {"_engine", "status", "logging"},
    "_torchrun": {
        "status",
        "logging",
        "health_check_server",
        "_config",
        "_http",
        "_tcp",
        "_engine",
        "worker",
        "torchelastic",  # the plain-torchrun entry point installs the public integration
    },
    "_cli": {
        "status",
        "logging",
        "health_check_server",
        "_config",
        "_http",
        "_tcp",
        "progress",
        "torchelastic",
        "__init__",
    },
}

# Pure layers: bytes or numbers in, bytes or verdicts out. Protocols see a transport only.
NO_IO = [
    "status",
    "_http.wire",
    "_http.prometheus",
    "_tcp.line",
    "_torchrun.ranks",
    "_torchrun.blame",
    "_torchrun.verdict",
    "_torchrun.metrics",
    "_engine.protocol",
    "_http.protocol",
    "_tcp.protocol",
    "_http.server",
    "_tcp.server",
]
IO_MODULES = {"socket", "selectors", "threading", "select", "asyncio", "ssl", "mmap"}

ENGINE = [m for m in RANK if m.startswith("_engine.")]
ENGINE_AND_PROTOCOLS = [*ENGINE, "_http.protocol", "_http.server", "_tcp.protocol", "_tcp.server"]
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300


def _path(module: str) -> Path:
    parts = module.split(".")
    folder = PACKAGE_DIR.joinpath(*parts)
    if folder.is_dir():
        return folder / "__init__.py"
    return PACKAGE_DIR.joinpath(*parts[:-1], parts[-1] + ".py")


def _tree(module: str) -> ast.Module:
    return ast.parse(_path(module).read_text())


def _is_package(module: str) -> bool:
    return _path(module).name == "__init__.py" and module != "__init__"


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside ``if TYPE_CHECKING:`` (annotations, never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for inner in node.body:
                for sub in ast.walk(inner):
                    if isinstance(sub, ast.ImportFrom | ast.Import):
                        lines.add(sub.lineno)
    return lines


def _package_imports(module: str) -> set[str]:
    """The package modules ``module`` imports, as keys of RANK."""
    tree = _tree(module)
    skip = _type_checking_only(tree)
    here = [] if module == "__init__" else module.split(".")
    package = here if _is_package(module) else here[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0 or node.lineno in skip:
            continue
        base = package[: len(package) - (node.level - 1)]
        target = [*base, *(node.module.split(".") if node.module else [])]
        if node.module:
            candidates = [".".join(target)]
        else:  # `from . import name`: a module of that package, or one of its names
            candidates = [".".join([*target, alias.name]) for alias in node.names]
        for candidate in candidates:
            while candidate and candidate not in RANK:
                candidate = candidate.rpartition(".")[0]
            names.add(candidate or "__init__")
    return names


def _io_imports(module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & IO_MODULES


def _all_modules() -> list[str]:
    found = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        if parts == ["__init__"]:
            found.add("__init__")
        elif parts[-1] == "__init__":
            found.add(".".join(parts[:-1]))
        else:
            found.add(".".join(parts))
    return sorted(found)


MODULES = _all_modules()
FOLDERS = sorted(m for m in MODULES if _is_package(m))


def test_every_module_has_a_layer():
    assert not set(MODULES) - set(RANK), "place new modules in LAYERS"
    assert not set(RANK) - set(MODULES), "LAYERS names a module that is gone"


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    for imported in _package_imports(module):
        assert imported in RANK, imported
        if imported == module or (RANK[module] == EDGES and RANK[imported] == EDGES):
            continue
        if _is_package(imported) and module.startswith(imported + "."):
            continue  # a module of a folder may read its folder's docstring-only package
        assert RANK[imported] < RANK[module], f"{module} imports {imported}, a layer above"


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_says_what_it_holds_and_imports_only_what_it_may(folder):
    docstring = ast.get_docstring(_tree(folder))
    assert docstring and "May import" in docstring, folder
    allowed = FOLDER_IMPORTS[folder]
    for module in [m for m in MODULES if m == folder or m.startswith(folder + ".")]:
        for imported in _package_imports(module):
            top = imported.split(".")[0]
            assert top == folder or top in allowed, f"{module} imports {imported}"


def test_the_top_of_the_package_holds_only_what_users_import():
    top = sorted(p.stem for p in PACKAGE_DIR.glob("*.py"))
    assert top == [
        "__init__",
        "__main__",
        "health_check_server",
        "log_level",
        "logging",
        "progress",
        "status",
        "torchelastic",
        "worker",
    ]


def test_no_import_circle():
    """Lazy imports count too: a circle is a circle whenever it closes."""
    graph = {module: _package_imports(module) - {module} for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            # A module and the package it lives in (its docstring) are one place.
            if not all(
                _is_package(a) and b.startswith(a + ".") or _is_package(b) and a.startswith(b + ".")
                for a, b in zip(cycle, cycle[1:], strict=False)
            ):
                raise AssertionError(" -> ".join(cycle))
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


@pytest.mark.parametrize("module", NO_IO)
def test_pure_layers_and_protocols_import_no_io(module):
    assert not _io_imports(module)


@pytest.mark.parametrize("module", ENGINE_AND_PROTOCOLS)
def test_engine_parts_are_small_and_say_their_job(module):
    tree = _tree(module)
    lines = _path(module).read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"
    docstring = ast.get_docstring(tree)
    assert docstring and docstring.splitlines()[0].strip(), f"{module} says not what it does"
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{module}.{node.name}: {size} lines"
            doc = ast.get_docstring(node)
            assert doc and doc.splitlines()[0].strip(), f"{module}.{node.name}: no job"


MAX_FUNCTION_LINES = 65  # lines of code: no docstring, blank lines or comment lines


def _code_lines(source: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if len(body) == 1:
            return 0
        first = body[1]
    lines = source[first.lineno - 1 : node.end_lineno]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


@pytest.mark.parametrize("module", MODULES)
def test_every_function_reads_in_one_screen(module):
    source = _path(module).read_text().splitlines()
    too_long = [
        f"{module}.{node.name}: {size} lines"
        for node in ast.walk(_tree(module))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (size := _code_lines(source, node)) > MAX_FUNCTION_LINES
    ]
    assert not too_long
