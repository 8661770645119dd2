"""Every public module's __all__ is honest, and the layering points downward only."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import elastic_healthcheck

PACKAGE_DIR = Path(elastic_healthcheck.__file__).parent
PUBLIC_MODULES = sorted(
    m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)]) if not m.name.startswith("_")
)


def test_package_all_names_exist_and_are_unique():
    assert len(set(elastic_healthcheck.__all__)) == len(elastic_healthcheck.__all__)
    for name in elastic_healthcheck.__all__:
        assert getattr(elastic_healthcheck, name) is not None, name


def test_exported_objects_claim_a_public_home():
    """What the package exports is re-exported, never defined twice."""
    for name in elastic_healthcheck.__all__:
        obj = getattr(elastic_healthcheck, name)
        module = getattr(obj, "__module__", None)
        if module is not None:
            assert module.startswith("elastic_healthcheck"), (name, module)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_module_declares_all(module_name):
    module = importlib.import_module(f"elastic_healthcheck.{module_name}")
    assert isinstance(module.__all__, list)
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name!r}"


# Pure layers never touch sockets or threads.
PURE_MODULES = ["status"]
IO_MODULES = {"socket", "selectors", "threading", "select", "asyncio"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module_name", PURE_MODULES)
def test_pure_layers_import_no_io(module_name):
    assert not _imports(PACKAGE_DIR / f"{module_name}.py") & IO_MODULES


def test_the_base_for_a_new_protocol_is_public():
    """A team adding a protocol imports what it subclasses from the package, not its insides."""
    names = {"SocketHealthCheckServer", "BaseProtocol", "Transport", "Services"}
    assert names <= set(elastic_healthcheck.__all__)
    base = elastic_healthcheck.SocketHealthCheckServer
    assert issubclass(elastic_healthcheck.HTTPHealthCheckServer, base)
    assert issubclass(elastic_healthcheck.TCPHealthCheckServer, base)
    assert issubclass(base, elastic_healthcheck.HealthCheckServer)


def test_import_loads_no_engine():
    """The new names are lazy too: importing the package imports none of them."""
    import subprocess
    import sys

    code = "import sys, elastic_healthcheck; print(sorted(m for m in sys.modules if '._' in m))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout
