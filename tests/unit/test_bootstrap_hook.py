"""The bootstrap's post-import hook, on a stand-in top-level package instead of torch."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest

from elastic_healthcheck._torchrun.bootstrap import USAGE, _PostImportHook, main


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A package ``ehc_stand_in`` on sys.path, forgotten again after the test."""
    name = "ehc_stand_in"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def installed(monkeypatch):
    """Install a hook at the front of sys.meta_path (restored afterwards)."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))

    def install(hook: _PostImportHook) -> _PostImportHook:
        sys.meta_path.insert(0, hook)
        return hook

    return install


def test_on_import_runs_once_after_the_module_executed_and_the_hook_leaves(stand_in, installed):
    seen: list[object] = []
    hook = installed(_PostImportHook(stand_in, lambda module: seen.append(module.VALUE)))
    module = importlib.import_module(stand_in)
    assert seen == [42]
    assert hook not in sys.meta_path
    assert module.__spec__ is not None
    assert "exec_module" not in vars(module.__spec__.loader)  # the loader is as it was


def test_a_find_spec_probe_does_not_use_the_hook_up(stand_in, installed):
    seen: list[str] = []
    hook = installed(_PostImportHook(stand_in, lambda module: seen.append(module.__name__)))
    assert importlib.util.find_spec(stand_in) is not None
    assert seen == [] and hook in sys.meta_path
    importlib.import_module(stand_in)
    assert seen == [stand_in]


def test_other_modules_and_missing_ones_pass_through(stand_in, installed):
    seen: list[object] = []
    hook = installed(_PostImportHook(stand_in, seen.append))
    assert hook.find_spec("json", None) is None
    assert (
        _PostImportHook("ehc_no_such_module", seen.append).find_spec("ehc_no_such_module", None)
        is None
    )
    assert seen == []


def test_a_failing_import_does_not_call_on_import(tmp_path, installed, monkeypatch):
    (tmp_path / "ehc_broken.py").write_text("raise ImportError('half installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    seen: list[object] = []
    installed(_PostImportHook("ehc_broken", seen.append))
    with pytest.raises(ImportError, match="half installed"):
        importlib.import_module("ehc_broken")
    assert seen == []
    sys.modules.pop("ehc_broken", None)


@pytest.mark.parametrize("argv", [[], ["-m"], ["--flag"]])
def test_a_bad_command_line_is_the_usage_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"{USAGE}\n"
