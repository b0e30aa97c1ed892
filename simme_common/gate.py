"""04's regression gate: like-for-like comparison of the twin with a previous adapter (paired bootstrap on the same
split) or with an earlier scorecard.json; the split fingerprint; the human fool rate of the "Real or twin?" tab."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from .metric_defs import GATE_TOLERANCES
from .runtime import UserError


def split_fingerprint(samples: list[list[dict]]) -> str:
    """A short hash of the scored samples (order-free): equal fingerprints = the same contexts and real replies."""
    rows = sorted(hashlib.sha256(json.dumps(s, ensure_ascii=False, sort_keys=True).encode()).hexdigest() for s in samples)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def paired_interval(stat_current: Callable, stat_baseline: Callable, n: int, n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """95 % percentile interval (scipy.stats.bootstrap) of stat_current - stat_baseline on the same resampled contexts."""
    import warnings

    import numpy as np
    from scipy.stats import bootstrap

    if n < 2:
        return None

    def delta(idx):
        idx = np.asarray(idx, dtype=int)
        a, b = stat_current(idx), stat_baseline(idx)
        return np.nan if a is None or b is None else float(a - b)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((np.arange(n),), delta, n_resamples=n_boot, vectorized=False, method="percentile",
                        rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return None if np.isnan(lo) or np.isnan(hi) else [lo, hi]


def split_interval(current: list[float] | None, baseline: list[float] | None, n_boot: int = 1000,
                   seed: int = 0) -> list[float] | None:
    """`paired_interval` of the mean of current - baseline over the same seeded splits (MAUVE's half-splits: one
    value per split and side, so the splits are what is resampled)."""
    import numpy as np

    if not current or not baseline or len(current) != len(baseline):
        return None
    cur, base = np.asarray(current, dtype=float), np.asarray(baseline, dtype=float)
    return paired_interval(lambda idx: cur[idx].mean(), lambda idx: base[idx].mean(), len(cur), n_boot, seed)


def compare_scorecards(current: dict[str, Any], baseline: dict[str, Any],
                       tolerances: dict[str, tuple[str, float, str]] = GATE_TOLERANCES,
                       intervals: dict[str, list[float] | None] | None = None,
                       current_side: str = "finetuned", baseline_side: str = "finetuned") -> list[dict[str, Any]]:
    """Gate rows, one per gated metric: "ok", "better", "REGRESSED", "MISSING" (in the baseline, gone now) or "n/a".

    A metric regresses when it worsens by more than its tolerance (absolute, or relative for "rel") and, where a
    paired interval of current - baseline is given, the interval lies on the worse side of zero (noise does not fail).
    """
    rows = []
    cur, base = current.get(current_side) or {}, baseline.get(baseline_side) or {}
    for key, (direction, tol, kind) in tolerances.items():
        a, b = base.get(key), cur.get(key)
        interval = (intervals or {}).get(key)
        row = {"metric": key, "baseline": a, "current": b, "delta": None, "interval": interval,
               "allowed": f"{tol:.0%}" if kind == "rel" else tol}
        if a is None:
            rows.append(row | {"status": "n/a"})
            continue
        if b is None:
            rows.append(row | {"status": "MISSING"})
            continue
        worse = (b - a) if direction == "lower" else (a - b)  # > 0 means worse
        allowed = tol * abs(a) if kind == "rel" else tol
        significant = True
        if interval is not None:
            significant = interval[0] > 0 if direction == "lower" else interval[1] < 0
        status = "REGRESSED" if worse > allowed + 1e-12 and significant else ("better" if worse < 0 else "ok")
        rows.append(row | {"delta": b - a, "status": status})
    return rows


def gate_passed(rows: list[dict[str, Any]]) -> bool:
    """True when no row regressed and no metric of the baseline is missing now."""
    return all(r["status"] not in ("REGRESSED", "MISSING") for r in rows)


def load_baseline_scorecard(path: str) -> dict[str, Any]:
    """An earlier scorecard.json, or a UserError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"--baseline {path} is not a readable scorecard.json ({err})") from None


def fool_rate(blind_dir: str) -> dict[str, Any]:
    """Human fool rate from the app's "Real or twin?" guesses: share of twin replies guessed "real", Wilson 95 %.

    `blind_dir` is the datasets-on-disk folder (`$SIMME_FEEDBACK_DIR/blind_guesses`) or the feedback folder above it.
    """
    from datasets import load_from_disk
    from scipy.stats import binomtest

    path = Path(blind_dir)
    if not (path / "dataset_info.json").exists() and (path / "blind_guesses" / "dataset_info.json").exists():
        path = path / "blind_guesses"
    if not (path / "dataset_info.json").exists():
        raise UserError(f"--blind_results {blind_dir} holds no blind_guesses dataset (the app writes it under $SIMME_FEEDBACK_DIR)")
    data = load_from_disk(str(path))
    missing = {"shown", "guessed"} - set(data.column_names)
    if missing:
        raise UserError(f"--blind_results {path} lacks the column(s) {sorted(missing)}")
    twin = [g for s, g in zip(data["shown"], data["guessed"]) if s == "twin"]
    fooled = sum(g == "real" for g in twin)
    real_shown = [g for s, g in zip(data["shown"], data["guessed"]) if s == "real"]
    out = {"fool_rate": fooled / len(twin) if twin else None, "n_twin_shown": len(twin), "n_guesses": len(data),
           "real_recognized_rate": sum(g == "real" for g in real_shown) / len(real_shown) if real_shown else None,
           "ci": None}
    if twin:
        ci = binomtest(fooled, len(twin)).proportion_ci(confidence_level=0.95, method="wilson")
        out["ci"] = [float(ci.low), float(ci.high)]
    return out
