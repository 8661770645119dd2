""".ci/run and the workflow that runs it: what CI does on a machine that is not this one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / ".ci" / "run").read_text()


def _promtool_step() -> str:
    """The script's promtool step, from its `if` to the `fi` that closes it."""
    start = re.escape('if [ "${CI_SKIP_PROMTOOL:-0}" != 1 ]; then')
    match = re.search(rf"^{start}\n.*?^fi\n", SCRIPT, re.S | re.M)
    assert match is not None
    return match.group(0)


def _run(step: str, path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", "-c", f"set -euo pipefail\n{step}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(path), **env},
        cwd=ROOT,
    )


def test_without_apt_get_the_promtool_step_is_skipped_with_a_line(tmp_path):
    """macOS: neither promtool nor apt-get. The step says so and CI goes on (no exit 1)."""
    result = _run(_promtool_step(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "there is no apt-get here to install it: skipped" in result.stdout


def test_ci_skip_promtool_skips_the_step(tmp_path):
    result = _run(_promtool_step(), tmp_path, CI_SKIP_PROMTOOL="1")
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize("variable", ["CI_SKIP_TORCH", "CI_SKIP_PROMTOOL", "CI_TORCH_INDEX"])
def test_the_workflow_and_the_readme_name_every_switch_of_the_script(variable):
    assert variable in SCRIPT
    assert variable in (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    if variable != "CI_TORCH_INDEX":
        assert variable in (ROOT / "README.md").read_text()


def test_the_macos_leg_skips_what_only_debian_installs():
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert "macos-latest" in workflow
    assert "CI_SKIP_PROMTOOL: ${{ matrix.os == 'macos-latest' && '1' || '0' }}" in workflow
