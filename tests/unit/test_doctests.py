"""The examples in docstrings run, so the documentation cannot drift from behaviour."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

MODULES = [
    "elastic_healthcheck.status",
    "elastic_healthcheck.progress",
    "elastic_healthcheck._http.server",
    "elastic_healthcheck._config.kinds",
    "elastic_healthcheck._config.settings",
    "elastic_healthcheck._config.options",
]


def _code_file(obj: object) -> str | None:
    """The file a function's code, or a class's first function's, comes from."""
    code = getattr(inspect.unwrap(obj), "__code__", None) if callable(obj) else None
    if code is not None:
        return str(code.co_filename)
    for member in vars(obj).values() if inspect.isclass(obj) else ():
        found = _code_file(member) if inspect.isfunction(member) else None
        if found:
            return found
    return None


class _DefinedHere(doctest.DocTestFinder):
    """Finds the examples of everything a module's file defines, public classes included
    (they name the package as their ``__module__``, which the default finder skips)."""

    def _from_module(self, module: object, object: object) -> bool:  # doctest's signature
        path = _code_file(object)
        if path is not None:
            return path == getattr(module, "__file__", None)
        return bool(super()._from_module(module, object))  # type: ignore[misc]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in _DefinedHere().find(module):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
