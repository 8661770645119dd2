"""Just enough Markdown for the docs tests: fenced blocks, their markers, and pipe tables.

The conventions are described for writers in docs/writing-examples.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
# `<!-- no-test: reason -->` on the line before a fence: the block cannot run here.
MARKER = re.compile(r"<!--\s*no-test\b(?P<colon>:?)(?P<reason>.*?)-->")
CODE_SPAN = re.compile(r"`([^`]+)`")


def documents() -> list[Path]:
    """Every document whose examples run: README.md, docs/*.md, benchmarks/README.md.

    A new docs/*.md file is picked up without any change here.
    """
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    paths.append(ROOT / "benchmarks" / "README.md")
    return [path for path in paths if path.exists()]


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    skip_reason: str | None  # the no-test marker's reason; "" for a marker without one

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def first_line(self) -> int:
        """The line number of the block's first line of content."""
        return self.line + 1


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path``, each with the no-test marker just before it."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        language = (match["info"].split() or [""])[0].lower()
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end][indent:] if lines[end][:indent].isspace() else lines[end])
            end += 1
        previous = index - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        marker = MARKER.search(lines[previous]) if previous >= 0 else None
        reason = None
        if marker is not None:
            reason = marker["reason"].strip() if marker["colon"] else ""
        found.append(Block(path, index + 1, language, "\n".join(body) + "\n", reason))
        index = end + 1
    return found


def stray_markers(path: Path) -> list[int]:
    """Lines with a no-test marker that is not right before a fence (it would do nothing)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = blocks(path)
    before_fence = {block.line for block in found if block.skip_reason is not None}
    inside = {
        number
        for block in found
        for number in range(block.line, block.line + block.text.count("\n") + 2)
    }
    stray = []
    for number, line in enumerate(lines, start=1):
        if number in inside:
            continue  # an example of a marker, in a code block
        if not line.lstrip().startswith("<!--") or MARKER.search(line) is None:
            continue  # prose may quote the marker in a `code span`
        following = number  # index of the next line
        while following < len(lines) and not lines[following].strip():
            following += 1
        if following + 1 not in before_fence:
            stray.append(number)
    return stray


@dataclass
class Table:
    path: Path
    line: int
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _cells(line: str) -> tuple[str, ...]:
    inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    # A `\|` inside a cell is a literal pipe, not a column break.
    parts = re.split(r"(?<!\\)\|", inner)
    return tuple(part.strip().replace("\\|", "|") for part in parts)


def tables(path: Path) -> list[Table]:
    """The pipe tables of ``path`` outside code blocks."""
    found: list[Table] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    in_code: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        match = FENCE.match(line)
        if match is not None:
            if in_code is None:
                in_code = match["fence"]
            elif line.strip().startswith(in_code):
                in_code = None
            index += 1
            continue
        if (
            in_code is None
            and line.lstrip().startswith("|")
            and index + 1 < len(lines)
            and re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", lines[index + 1])
            and "-" in lines[index + 1]
        ):
            header = tuple(cell.lower().replace("`", "") for cell in _cells(line))
            rows = []
            end = index + 2
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                rows.append(_cells(lines[end]))
                end += 1
            found.append(Table(path, index + 1, header, rows))
            index = end
            continue
        index += 1
    return found


def code_spans(text: str) -> list[str]:
    """The `code` spans of a table cell, in order."""
    return CODE_SPAN.findall(text)
