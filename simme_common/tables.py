"""Number formatting and aligned / markdown tables for the stages' printed summaries and scorecards."""

from __future__ import annotations

from typing import Any


def print_table(rows: list[tuple[str, Any]], title: str | None = None) -> str:
    """Format (name, value) rows as an aligned two-column table; numbers get thousands separators."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    width = max((len(str(k)) for k, _ in rows), default=0)
    lines = [title] if title else []
    lines += [f"  {str(k):<{width}} | {fmt(v)}" for k, v in rows]
    return "\n".join(lines)


def format_metric(value: Any) -> str:
    """A metric value for tables: 4 significant digits, "-" for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def format_grid(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """A multi-column text table (aligned for the terminal, or GitHub markdown)."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(header), "  " + "-+-".join("-" * w for w in widths)] + [fmt(r) for r in rows])
