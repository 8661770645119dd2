"""DESIGN.md's layering, checked: imports point down, pure layers do no I/O, parts are small."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import elastic_healthcheck

PACKAGE_DIR = Path(elastic_healthcheck.__file__).parent

# Bottom first. A module imports only modules of a lower layer (edges may import edges).
LAYERS: list[tuple[str, list[str]]] = [
    ("logging helper", ["log_level"]),
    ("logging helper", ["logging"]),
    ("status", ["status"]),
    ("torch-identical base", ["health_check_server"]),
    (
        "wire formats and records",
        ["_httpwire", "_prometheus", "_progress", "_rankrecord", "_stacks"],
    ),
    ("the torchrun verdict", ["_groupverdict"]),
    ("protocol interface", ["_protocol"]),
    ("engine: listeners, loop, evaluator", ["_listeners", "_loop", "_evaluator"]),
    ("engine: transport", ["_transport"]),
    ("engine: verdicts", ["_verdicts"]),
    ("engine: a running server's parts", ["_engine"]),
    ("engine: the server base", ["_server"]),
    ("protocols", ["_httpproto"]),
    ("servers", ["_http", "_tcp"]),
    (
        "edges",
        [
            "_kinds",
            "_probe",
            "_cli",
            "worker",
            "_bootstrap",
            "_agentstate",
            "_hangwatch",
            "torchelastic",
            "__init__",
            "__main__",
        ],
    ),
]
RANK = {module: rank for rank, (_name, modules) in enumerate(LAYERS) for module in modules}
EDGES = RANK["_kinds"]

# Upward imports on purpose, each with its reason.
ALLOWED_UPWARD = {
    # The factory resolves server kinds by name at call time (DESIGN.md: a registry of
    # names resolved lazily), so that the base never imports a server at import time.
    ("health_check_server", "_kinds"),
}

# Pure layers: bytes or numbers in, bytes or verdicts out. Protocols see a transport only.
NO_IO = [
    "status",
    "_httpwire",
    "_prometheus",
    "_protocol",
    "_httpproto",
    "_http",
    "_tcp",
]
IO_MODULES = {"socket", "selectors", "threading", "select", "asyncio", "ssl"}

ENGINE = ["_listeners", "_loop", "_evaluator", "_transport", "_verdicts", "_engine", "_server"]
ENGINE_AND_PROTOCOLS = [*ENGINE, "_protocol", "_httpproto", "_http", "_tcp"]
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300


def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE_DIR / f"{module}.py").read_text())


def _package_imports(module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:  # `from . import name`: a module, or a name of the package itself
                names.update(a.name if a.name in RANK else "__init__" for a in node.names)
    return names


def _io_imports(module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & IO_MODULES


MODULES = sorted({m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)])} | {"__init__"})


def test_every_module_has_a_layer():
    assert not set(MODULES) - set(RANK), "place new modules in LAYERS"


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    for imported in _package_imports(module):
        if (module, imported) in ALLOWED_UPWARD:
            continue
        assert imported in RANK, imported
        if RANK[module] == EDGES and RANK[imported] == EDGES:
            continue
        assert RANK[imported] < RANK[module], f"{module} imports {imported}, a layer above"


@pytest.mark.parametrize("module", NO_IO)
def test_pure_layers_and_protocols_import_no_io(module):
    assert not _io_imports(module)


@pytest.mark.parametrize("module", ENGINE_AND_PROTOCOLS)
def test_engine_parts_are_small_and_say_their_job(module):
    tree = _tree(module)
    lines = (PACKAGE_DIR / f"{module}.py").read_text().count("\n")
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
