"""Shared method of every SimMe benchmark: alternate project path and baseline in one run, report
median, spread and ratio, peak RSS, and the machine's own floors (GEMM rate, memory bandwidth).

The machines are noisy, so absolute numbers alone mean little: every benchmark measures its baseline
in the same run, alternating (A B A B ...), and reports ratios of medians.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "outputs" / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def alternate(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 0) -> dict[str, list[float]]:
    """Time each callable `reps` times, interleaved (A B A B ...), after `warmup` untimed rounds; seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def stats(samples: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of a list of measurements."""
    med = statistics.median(samples)
    return {
        "median": med,
        "min": min(samples),
        "max": max(samples),
        "spread": (max(samples) - min(samples)) / med if med else 0.0,
        "n": len(samples),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process (and waited-for children) in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0  # Linux reports KiB


def gemm_gflops(n: int = 1024, reps: int = 5, dtype: str = "float32") -> float:
    """Best measured fp32 matmul rate (GFLOP/s) of torch on this machine with its current thread count."""
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b  # warm up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def mem_bandwidth_gbs(mb: int = 256, reps: int = 5) -> float:
    """Best measured memory read bandwidth (GB/s): summing a large fp32 array that does not fit in cache."""
    import torch

    x = torch.ones(mb * 1024 * 1024 // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def machine_info() -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_result(key: str, result: dict, quick: bool) -> Path:
    """Write outputs/bench/<key>.json with the machine info and the quick flag; print it; return the path."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    record = {"key": key, "quick": quick, "machine": machine_info(), "peak_rss_mb": round(peak_rss_mb(), 1), **result}
    path = OUT_DIR / f"{key}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return path


def summary_row(metric: str, unit: str, project: list[float], baseline: list[float] | None = None,
                higher_is_better: bool = True, target: str = "") -> dict:
    """One row of the Markdown table `make bench` prints: medians, spreads and the project/baseline ratio.

    `project`/`baseline` are raw samples in `unit` (e.g. tokens/s or seconds); the ratio is oriented so that
    > 1 means the project path is better.
    """
    p = stats(project)
    row = {"metric": metric, "unit": unit, "project": p["median"], "project_spread": p["spread"], "target": target}
    if baseline:
        b = stats(baseline)
        row.update(baseline=b["median"], baseline_spread=b["spread"])
        row["ratio"] = (p["median"] / b["median"]) if higher_is_better else (b["median"] / p["median"])
    return row
