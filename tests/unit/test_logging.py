"""get_logger behaves as torch.distributed.elastic.utils.logging.get_logger does."""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from elastic_healthcheck import get_log_level, get_logger
from elastic_healthcheck import logging as eh_logging

CALLER_SOURCE = """
from elastic_healthcheck import get_logger

MODULE_LOGGER = get_logger()


class Holder:
    class_logger = get_logger()

    def method_logger(self):
        return get_logger()


def function_logger():
    return get_logger()


def nested_logger():
    def inner():
        return get_logger()
    return inner()
"""


@pytest.fixture
def caller_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real module, imported from a file, that calls get_logger at every scope."""
    name = f"caller_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(CALLER_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def _default_loglevel(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LOGLEVEL", raising=False)


def test_default_level_is_warning():
    assert get_log_level() == "WARNING"


def test_name_at_module_scope(caller_module):
    assert caller_module.MODULE_LOGGER.name == caller_module.__name__


def test_name_in_class_body(caller_module):
    assert caller_module.Holder.class_logger.name == caller_module.__name__


def test_name_in_function(caller_module):
    assert caller_module.function_logger().name == caller_module.__name__


def test_name_in_method(caller_module):
    assert caller_module.Holder().method_logger().name == caller_module.__name__


def test_name_in_nested_function(caller_module):
    assert caller_module.nested_logger().name == caller_module.__name__


def test_name_in_this_test_module():
    assert get_logger().name == __name__


def test_falls_back_to_file_name_when_no_module_is_known():
    code = compile("logger = get_logger()", "/somewhere/train_script.py", "exec")
    namespace: dict[str, Any] = {"get_logger": get_logger}
    exec(code, namespace)
    assert namespace["logger"].name == "train_script"


def test_explicit_name_is_used_verbatim():
    assert get_logger("my.component").name == "my.component"


def test_empty_name_is_derived_too():
    """torch uses ``name or derived``, so "" derives the caller's module."""
    assert get_logger("").name == __name__


def test_level_comes_from_loglevel(monkeypatch):
    monkeypatch.setenv("LOGLEVEL", "DEBUG")
    assert get_logger("eh.test.level").level == logging.DEBUG


def test_level_is_set_again_on_every_call(monkeypatch):
    logger = get_logger("eh.test.every-call")
    assert logger.level == logging.WARNING
    monkeypatch.setenv("LOGLEVEL", "INFO")
    assert get_logger("eh.test.every-call").level == logging.INFO
    logger.setLevel(logging.ERROR)
    get_logger("eh.test.every-call")
    assert logger.level == logging.INFO


@pytest.mark.parametrize("name", ["WARN", "FATAL", "CRITICAL", "NOTSET", "ERROR"])
def test_every_name_setlevel_accepts_works(monkeypatch, name):
    monkeypatch.setenv("LOGLEVEL", name)
    assert get_logger("eh.test.names").level == logging.getLevelName(name)


@pytest.mark.parametrize("value", ["info", "10", "BOGUS", ""])
def test_invalid_loglevel_raises_valueerror_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("LOGLEVEL", value)
    with pytest.raises(ValueError, match=r"LOGLEVEL=.*DEBUG.*INFO.*WARNING"):
        get_logger("eh.test.invalid")


def test_invalid_loglevel_raises_on_every_call(monkeypatch):
    monkeypatch.setenv("LOGLEVEL", "bogus")
    for _ in range(2):
        with pytest.raises(ValueError):
            get_logger("eh.test.invalid-twice")


def test_no_handler_is_added():
    logger = get_logger("eh.test.handlers")
    get_logger("eh.test.handlers")
    assert logger.handlers == []
    assert logger.propagate is True


def test_derive_module_name_depth_one_is_the_caller():
    assert eh_logging._derive_module_name(1) == __name__


def test_derive_module_name_too_deep_warns_and_returns_none():
    with pytest.warns(RuntimeWarning, match="Error deriving logger module name, using <None>"):
        assert eh_logging._derive_module_name(depth=100_000) is None


def test_setup_logger_with_none_is_the_root_logger():
    assert eh_logging._setup_logger(None) is logging.getLogger()
    assert eh_logging._setup_logger("eh.test.setup").name == "eh.test.setup"


def test_same_names_as_torch(caller_module):
    """Where torch is installed, both derive the same names at every scope."""
    torch_logging = pytest.importorskip("torch.distributed.elastic.utils.logging")
    code = textwrap.dedent(
        """
        def both():
            return get_logger().name, torch_get_logger().name
        """
    )
    namespace = {
        "__name__": caller_module.__name__,
        "get_logger": get_logger,
        "torch_get_logger": torch_logging.get_logger,
    }
    exec(compile(code, caller_module.__file__, "exec"), namespace)
    ours, theirs = namespace["both"]()
    assert ours == theirs == caller_module.__name__
