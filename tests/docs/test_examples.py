"""Every example in the documents runs, so the documents cannot drift from behaviour.

What runs (docs/writing-examples.md tells writers the same):

- ```python blocks in README.md, docs/*.md and benchmarks/README.md (new files are picked
  up by themselves). A block with ``>>>`` lines runs as a doctest; any other block is
  executed in a fresh namespace that holds only the stand-ins in :data:`STAND_INS`.
- ```console and ```sh blocks: each ``$ command`` line (with ``\\`` continuations) runs in
  order, and what follows it up to the next ``$`` is its expected output, compared after
  :func:`normalise`. Runnable commands are ``elastic-healthcheck ...`` (or ``python -m
  elastic_healthcheck``), ``echo $?`` and ``curl`` (skipped if curl is missing).
  ``elastic-healthcheck serve --port N`` runs on an ephemeral port instead: N in later
  commands and the real port in all output stand for each other. ``serve ... &`` keeps
  serving until the block ends; a ``serve`` in the foreground is stopped with SIGINT once
  it has printed its banner, and must then exit 0.
- A block that cannot run here has ``<!-- no-test: reason -->`` on the line before its
  fence. The reason is required.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .markdown import ROOT, Block, blocks, documents, stray_markers

SCRIPT = Path(sys.executable).with_name("elastic-healthcheck")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "elastic_healthcheck"]

PYTHON = ("python", "py", "pycon")
CONSOLE = ("console", "sh", "shell", "bash")


def _stand_ins() -> dict[str, object]:
    """Names an example may use without defining them: the user's own code."""
    return {
        "callback": lambda: time.time(),  # an alive_callback
        "loader": range(3),  # a training loop's batches
        "train_step": lambda batch: None,  # one training step
    }


STAND_INS = sorted(_stand_ins())

ALL_BLOCKS = [block for path in documents() for block in blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.language in PYTHON]
CONSOLE_BLOCKS = [b for b in ALL_BLOCKS if b.language in CONSOLE]


def _ids(items: list[Block]) -> list[str]:
    return [block.where for block in items]


def test_the_documents_have_examples():
    """The extraction works: the README alone has a dozen of each kind."""
    assert len(PYTHON_BLOCKS) >= 8, _ids(PYTHON_BLOCKS)
    assert len(CONSOLE_BLOCKS) >= 8, _ids(CONSOLE_BLOCKS)
    assert any(not b.skip_reason for b in CONSOLE_BLOCKS)


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_no_test_marker_has_a_reason_and_a_block(path):
    missing = [b.where for b in blocks(path) if b.skip_reason == ""]
    assert not missing, f"<!-- no-test: reason --> needs its reason: {missing}"
    stray = stray_markers(path)
    assert not stray, f"{path.name}: no-test markers not right before a fence, lines {stray}"


def _skip_if_marked(block: Block) -> None:
    if block.skip_reason:
        pytest.skip(f"marked no-test: {block.skip_reason}")
    assert block.skip_reason is None, f"{block.where}: a no-test marker needs a reason"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=_ids(PYTHON_BLOCKS))
def test_python_example(block, tmp_path, monkeypatch):
    _skip_if_marked(block)
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    name = block.where
    if re.search(r"^\s*>>> ", block.text, re.MULTILINE):
        parser = doctest.DocTestParser()
        test = parser.get_doctest(block.text, {}, name, str(block.path), block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        output: list[str] = []
        runner.run(test, out=output.append)
        assert runner.failures == 0, "".join(output)
        assert runner.tries > 0
        return
    code = compile("\n" * block.line + block.text, str(block.path), "exec")
    namespace: dict[str, object] = {"__name__": "__doc_example__", **_stand_ins()}
    exec(code, namespace)


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_dash_m_doctest_passes_on_the_whole_document(path):
    """`python -m doctest README.md` works too: every session ends before its fence."""
    result = doctest.testfile(str(path), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


JSON_BLOCKS = [b for b in ALL_BLOCKS if b.language == "json"]


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=_ids(JSON_BLOCKS))
def test_json_example_is_json(block):
    """A JSON example is what a server sends: JSON, without NaN or Infinity."""
    _skip_if_marked(block)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{block.where}: {constant} is not JSON")

    json.loads(block.text, parse_constant=refuse)


# -- console examples ----------------------------------------------------------------------


def parse_console(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each ``$`` line; ``#`` comments before it dropped."""
    steps: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("$ "):
            if steps:
                steps[-1][1].append(line)
            else:
                assert line.startswith("#") or not line.strip(), f"output before a command: {line}"
            index += 1
            continue
        command = line[2:]
        while command.endswith("\\") and index + 1 < len(lines):
            index += 1
            command = command[:-1] + " " + lines[index].strip()
        steps.append((command.strip(), []))
        index += 1
    return steps


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=_ids(ALL_BLOCKS))
def test_console_commands_are_well_quoted(block):
    """Even an example that cannot run here can be pasted: its quoting is whole, and code
    it hands to Python (``-c CODE``, ``--case CODE``) compiles."""
    if block.language not in CONSOLE:
        return
    for command, _ in parse_console(block.text):
        words = shlex.split(command, comments=True)
        for flag, value in zip(words, words[1:], strict=False):
            if flag in ("-c", "--case"):
                compile(value, f"{block.where} {flag}", "exec")


_TIME = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|us|s)\b")
_JSON_NUMBER = re.compile(r'("(?:age|last_progress|latency)"\s*:\s*)-?\d+(?:\.\d+)?(?:e[+-]?\d+)?')


def normalise(text: str) -> str:
    """Make an example's output comparable with a real run.

    Durations (``0.4s``, ``1.3ms``) become ``<duration>``; the JSON numbers ``age``,
    ``last_progress`` and ``latency`` become ``<number>``; runs of spaces become one, so
    that table columns may be as wide as the real values make them.
    """
    text = _TIME.sub("<duration>", text)
    text = _JSON_NUMBER.sub(r"\1<number>", text)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


class ConsoleRun:
    """Runs one console block's commands in order, the way a shell would show them."""

    def __init__(self, block: Block, tmp_path: Path) -> None:
        self.block = block
        self.cwd = tmp_path
        self.ports: dict[str, str] = {}  # the example's port -> the real one
        self.background: list[subprocess.Popen[str]] = []
        self.status = 0

    def close(self) -> None:
        for process in self.background:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=10)
            assert process.returncode == 0, err
            assert "Traceback" not in err

    def run(self, command: str, expected: list[str]) -> None:
        where = f"{self.block.where}: $ {command}"
        if command == "echo $?":
            actual = str(self.status)
        else:
            words = shlex.split(command)
            program = next(w for w in words if "=" not in w or w.startswith("-"))
            if program == "curl" and shutil.which("curl") is None:
                pytest.skip("curl is not installed")
            if program not in ("elastic-healthcheck", "curl") and words[:3] != [
                "python",
                "-m",
                "elastic_healthcheck",
            ]:
                pytest.fail(
                    f"{where}: cannot run {program!r} here; make the example runnable or mark"
                    " the block with <!-- no-test: reason -->"
                )
            if "serve" in words and program != "curl":
                actual = self._serve(command, words)
            else:
                actual = self._run(command)
        for real, shown in self.ports.items():
            actual = actual.replace(real, shown)
        assert normalise(actual) == normalise("\n".join(expected)), (
            f"{where}\n--- documented\n" + "\n".join(expected) + f"\n--- real\n{actual}"
        )

    def _substitute(self, command: str) -> str:
        for shown, real in ((s, r) for r, s in self.ports.items()):
            command = re.sub(rf"(?<![\d.]){shown}(?!\d)", real, command)
        return command

    def _argv(self, command: str) -> str:
        command = self._substitute(command)
        for prefix in ("elastic-healthcheck", "python -m elastic_healthcheck"):
            command = re.sub(
                rf"(^|[|&;]\s*|=\S*\s+){re.escape(prefix)}\b",
                lambda m: m.group(1) + " ".join(map(shlex.quote, COMMAND)),
                command,
            )
        return command

    def _run(self, command: str) -> str:
        result = subprocess.run(
            ["bash", "-c", self._argv(command)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.cwd,
            env=_environment(),
        )
        self.status = result.returncode
        assert "Traceback" not in result.stderr, result.stderr
        return result.stdout + result.stderr

    def _serve(self, command: str, words: list[str]) -> str:
        background = command.rstrip().endswith("&")
        command = command.rstrip().rstrip("&").rstrip()
        shown_port = "8080"
        if "--port" in words:
            shown_port = words[words.index("--port") + 1]
            command = re.sub(r"--port\s+\d+", "--port 0", command)
        else:
            command += " --port 0"
        process = subprocess.Popen(
            ["bash", "-c", "exec " + self._argv(command)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
            env=_environment(),
        )
        assert process.stdout is not None
        banner = process.stdout.readline()  # printed once listening
        if not banner:
            _, err = process.communicate(timeout=10)
            pytest.fail(f"{self.block.where}: $ {command}: no banner\n{err}")
        port = re.search(r":(\d+)(?:/|\s|\))", banner.split(" on ", 1)[1])
        assert port is not None, banner
        self.ports[port.group(1)] = shown_port
        if background:
            self.background.append(process)
            self.status = 0
            return banner
        process.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = process.communicate(timeout=10)
        self.status = process.returncode
        assert self.status == 0, err
        return banner + out + err


def _environment() -> dict[str, str]:
    """This environment (the package under test included), without our own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELASTIC_HEALTHCHECK_")}
    env.pop("LOGLEVEL", None)
    return env


@pytest.mark.parametrize("block", CONSOLE_BLOCKS, ids=_ids(CONSOLE_BLOCKS))
def test_console_example(block, tmp_path):
    _skip_if_marked(block)
    steps = parse_console(block.text)
    assert steps, f"{block.where}: a console block without a $ command"
    session = ConsoleRun(block, tmp_path)
    try:
        for command, expected in steps:
            session.run(command, expected)
    finally:
        session.close()


def test_normalise_keeps_what_matters():
    """Placeholders cover times and ports only: a different verdict still differs."""
    documented = "node1:8080  alive  0.4s   1.3ms\n"
    assert normalise(documented) == normalise("node1:8080 alive 12.5s 0.9ms")
    assert normalise(documented) != normalise("node1:8080 dead 12.5s 0.9ms")
    assert normalise('{"age":0.85,"status":"alive"}') == normalise('{"age":3,"status":"alive"}')
    assert normalise('{"timeout":60.0}') != normalise('{"timeout":30.0}')


_LINK = re.compile(r"\]\((?!https?://|mailto:)([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``: lower case, punctuation dropped."""
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    """Moving a section to another page cannot leave a link behind."""
    for target in _LINK.findall(path.read_text(encoding="utf-8")):
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{path.name}: {target}"
