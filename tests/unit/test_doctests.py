"""The examples in docstrings run, so the documentation cannot drift from behaviour."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "elastic_healthcheck.status",
    "elastic_healthcheck.progress",
    "elastic_healthcheck._http.server",
    "elastic_healthcheck._config.kinds",
    "elastic_healthcheck._config.settings",
    "elastic_healthcheck._config.options",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
