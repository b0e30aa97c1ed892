"""The scorecard as a table and as scorecard.md (generated from metric_defs), and the regression gate."""

from __future__ import annotations

import json
from typing import Any

from .metric_defs import GATE_TOLERANCES, METRIC_DEFINITIONS, METRIC_KEYS, SEED_CLAIMS
from .tables import format_grid, format_metric


def compare_scorecards(current: dict[str, Any], baseline: dict[str, Any],
                       tolerances: dict[str, tuple[str, float, str]] = GATE_TOLERANCES) -> list[dict[str, Any]]:
    """Gate rows comparing two scorecards' fine-tuned sides: status "ok", "better" or "REGRESSED" per gated metric.

    A metric regresses when it worsens by more than its tolerance (absolute, or relative for "rel");
    metrics missing on either side are reported as "n/a" and never fail the gate.
    """
    rows = []
    cur, base = current.get("finetuned") or {}, baseline.get("finetuned") or {}
    for key, (direction, tol, kind) in tolerances.items():
        a, b = base.get(key), cur.get(key)
        if a is None or b is None:
            rows.append({"metric": key, "baseline": a, "current": b, "delta": None, "allowed": tol, "status": "n/a"})
            continue
        worse = (b - a) if direction == "lower" else (a - b)  # > 0 means worse
        allowed = tol * abs(a) if kind == "rel" else tol
        status = "REGRESSED" if worse > allowed + 1e-12 else ("better" if worse < 0 else "ok")
        rows.append({"metric": key, "baseline": a, "current": b, "delta": b - a,
                     "allowed": f"{tol:.0%}" if kind == "rel" else tol, "status": status})
    return rows


def scorecard_rows(scorecard: dict[str, Any]) -> list[list[str]]:
    """Rows (metric, base, twin [95 % CI], seed claim) of a scorecard, in METRIC_KEYS order."""
    base, twin = scorecard.get("base") or {}, scorecard.get("finetuned") or {}
    ci = (scorecard.get("ci") or {}).get("finetuned") or {}
    rows = []
    for key in METRIC_KEYS:
        interval = ci.get(key)
        twin_s = format_metric(twin.get(key)) + (f" [{format_metric(interval[0])}, {format_metric(interval[1])}]" if interval else "")
        rows.append([key, format_metric(base.get(key)), twin_s, SEED_CLAIMS.get(key, "-")])
    return rows


def scorecard_markdown(scorecard: dict[str, Any]) -> str:
    """scorecard.md: base vs twin vs the seed's claim, the definition of every metric and the run settings."""
    settings = scorecard.get("settings") or {}
    lines = [
        "# SimMe scorecard", "",
        f"{scorecard.get('n_examples', 0):,} held-out test contexts; base model and twin (base + LoRA) through the same "
        f"code path and seed. Twin values carry a 95 % bootstrap interval. Seed claims were never computed by the seed's code.", "",
        format_grid(["metric", "base", "twin [95% CI]", "seed claim"], scorecard_rows(scorecard), markdown=True), "",
        "Hallucination < 5 % (seed claim): not measured; open chit-chat has no reference facts. "
        "`memorization_rate` and `pii_leak_rate` are the closest safety checks.", "",
        "## Definitions", "",
    ]
    lines += [f"- **{k}**: {METRIC_DEFINITIONS[k]}." for k in METRIC_KEYS]
    lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(lines)
