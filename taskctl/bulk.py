"""Many calls of one job from a file: JSON Lines or CSV, every line checked before any is enqueued.

One bad line in ten thousand is usually a bad export, and a half-imported file is
worse than none: so by default nothing is enqueued while any line is bad, and
every bad line is reported with its number (``skip_invalid`` enqueues the rest).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from taskctl.catalog import CatalogEntry, get_catalog
from taskctl.enqueue import JobRef, Prepared, prepare
from taskctl.exceptions import TaskctlError
from taskctl.settings import Settings, get_settings

Format = Literal["jsonl", "csv"]
#: (line number, args, kwargs) of a readable line, or (line number, problem) of an unreadable one.
Line = tuple[int, list[Any], dict[str, Any]] | tuple[int, str]


@dataclass(frozen=True)
class BadLine:
    number: int
    problem: str


def _jsonl(lines: Iterable[str]) -> Iterator[Line]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not valid JSON ({exc.msg})"
            continue
        if isinstance(value, list):
            yield number, value, {}
        elif isinstance(value, dict):
            yield number, [], value
        else:
            yield number, "expected a JSON array (the arguments) or object (the keyword arguments)"


def _csv(lines: Iterable[str], entry: CatalogEntry) -> Iterator[Line]:
    """A header row names parameters; cells are converted like command-line words; empty cells are left out."""
    reader = csv.DictReader(iter(lines))
    names = [name for name in reader.fieldnames or []]
    unknown = [name for name in names if name not in entry.signature.parameters]
    if not names or unknown:
        problem = f"unknown column(s) {', '.join(unknown)}" if unknown else "no header row"
        yield 1, f"{problem}; columns are {entry.name}'s parameters: {', '.join(entry.signature.parameters)}"
        return
    for row in reader:
        if None in row:
            yield reader.line_num, f"more cells than the {len(names)} columns of the header"
            continue
        try:
            args, kwargs = entry.bind_text(
                [f"{name}={value}" for name, value in row.items() if value not in (None, "")]
            )
        except TaskctlError as exc:
            yield reader.line_num, str(exc)
            continue
        yield reader.line_num, args, kwargs


def read_calls(
    job: JobRef,
    lines: Iterable[str],
    fmt: Format = "jsonl",
    queue: str | None = None,
    settings: Settings | None = None,
) -> tuple[list[Prepared], list[BadLine]]:
    """Check every line; return the good calls and the bad lines, in file order."""
    settings = settings or get_settings()
    entry = get_catalog().get(job)
    good: list[Prepared] = []
    bad: list[BadLine] = []
    for line in _csv(lines, entry) if fmt == "csv" else _jsonl(lines):
        if len(line) == 2:
            bad.append(BadLine(line[0], line[1]))
            continue
        number, args, kwargs = line
        try:
            good.append(prepare(entry.func, args, kwargs, queue=queue, settings=settings))
        except TaskctlError as exc:
            bad.append(BadLine(number, str(exc)))
    return good, bad
