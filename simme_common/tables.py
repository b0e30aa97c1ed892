"""Number formatting and aligned / markdown tables for the stages' printed summaries and scorecards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runtime import UserError


def format_number(value: Any, digits: int = 4, none: str = "-") -> str:
    """A value for a table: ints with thousands separators, floats to `digits` significant digits (whole numbers
    from 10,000 up), `none` for None, anything else as str."""
    if value is None:
        return none
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def format_metric(value: Any) -> str:
    """A metric value for tables: 4 significant digits, "-" for None."""
    return format_number(value)


def print_table(rows: list[tuple[str, Any]], title: str | None = None) -> str:
    """Format (name, value) rows as an aligned two-column table; numbers get thousands separators."""
    table = format_grid(None, [[str(k), format_number(v, none="None")] for k, v in rows])
    return f"{title}\n{table}" if title else table


def format_grid(header: list[str] | None, rows: list[list[str]], markdown: bool = False) -> str:
    """A multi-column text table (aligned for the terminal, or GitHub markdown); no header line when None."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] if header else []
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(*([header] if header else []), *rows)]
    fmt = lambda r: ("  " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths))).rstrip()  # noqa: E731
    head = [fmt(header), "  " + "-+-".join("-" * w for w in widths)] if header else []
    return "\n".join(head + [fmt(r) for r in rows])


def replace_marked_section(path: str | Path, start: str, end: str, body: str) -> bool:
    """Replace what lies between the marker lines `start` and `end` of a docs page with `body` (generated text,
    never hand-edited); True when the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise UserError(f"{path} has no generated-section markers ({start} ... {end})")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{body}\n{end}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
