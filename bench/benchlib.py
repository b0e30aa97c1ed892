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
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "outputs" / "bench"  # `make bench`'s folder; every entry point takes --out_dir (tests pass a tmp dir)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import simme_common as sc  # noqa: E402


def add_out_dir_arg(parser) -> None:
    """The --out_dir flag every benchmark entry point takes."""
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR, help=f"where results and caches go (default {OUT_DIR})")


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


def layer_gemm_gflops(dims: dict[str, int], rows: int, reps: int = 5, dtype: str = "float32") -> float:
    """Best measured matmul rate (GFLOP/s) on one decoder layer's own shapes at `rows` tokens: each projection's
    forward ([rows x in] @ [in x out]) and input gradient ([rows x out] @ [out x in]).

    `dims`: hidden, intermediate, q (heads x head_dim) and kv (key-value heads x head_dim) widths. A square 1024²
    product keeps a CPU's widest units busy; a small model's narrow products may not, so this is the rate the
    model's own matmuls could reach, beside `gemm_gflops`'s."""
    import torch

    dt = getattr(torch, dtype)
    hidden, inter, q, kv = dims["hidden"], dims["intermediate"], dims["q"], dims["kv"]
    shapes = [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    pairs = [(torch.randn(rows, a, dtype=dt), torch.randn(a, b, dtype=dt)) for d_in, d_out in shapes
             for a, b in ((d_in, d_out), (d_out, d_in))]
    flops = sum(2 * rows * a.shape[1] * b.shape[1] for a, b in pairs)
    for a, b in pairs:
        a @ b  # warm up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for a, b in pairs:
            a @ b
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


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


# The CPU features that pick llama.cpp's and torch's kernels (AVX-512 BF16/VNNI, AMX tiles).
_KERNEL_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                 "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_flags() -> list[str]:
    """The kernel-relevant flags of /proc/cpuinfo's first CPU (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return []
    present = set(line.partition(":")[2].split())
    return [flag for flag in _KERNEL_FLAGS if flag in present]


def machine_info() -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": sc.git_commit(),
        "git_dirty": sc.git_dirty(),  # True: the figures came from uncommitted code
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_result(key: str, result: dict, quick: bool, out_dir: Path, echo: bool = True) -> Path:
    """Write <out_dir>/<key>.json with the machine info and the quick flag; print it (`echo`); return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"key": key, "quick": quick, "machine": machine_info(), "peak_rss_mb": round(peak_rss_mb(), 1), **result}
    path = out_dir / f"{key}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    if echo:
        print(json.dumps(record, indent=2, ensure_ascii=False))
    return path


def step_timer():
    """A Trainer callback recording the wall time of each optimizer step in `.times` (not the per-train() setup)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.t0)

    return StepTimer()


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


class Worker:
    """A measured configuration in its own process (`serve` on the other end): one request line in, one JSON line out.

    Own processes keep configurations apart: torch's OpenMP threads, llama.cpp's once-per-process settings and
    accelerate's state would otherwise leak from one into the next.
    """

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, stderr=None):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                     cwd=ROOT, env=env)
        self._ready: dict | None = None

    def ready(self) -> dict:
        """The worker's first JSON line, sent once it has loaded (waits for it)."""
        if self._ready is None:
            self._ready = self.read()
        return self._ready

    def read(self) -> dict:
        """Next JSON line the worker prints (other lines, e.g. library notices, are skipped)."""
        for line in self.proc.stdout:
            if line.startswith('{"'):  # the Trainer's own prints are Python dicts ({'loss': ...})
                return json.loads(line)
        raise RuntimeError(f"a bench worker exited early (code {self.proc.wait()}): {' '.join(self.proc.args)}")

    def call(self, request: str) -> dict:
        """Send one request line; the worker's JSON reply."""
        self.ready()
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self, timeout: float = 60) -> None:
        """End of input: the worker's `serve` returns and the process exits."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve(ready: dict, handle: Callable[[str], dict | None]) -> None:
    """The worker side of `Worker`: print `ready`, then one JSON reply per stdin line until EOF or `handle` -> None."""
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        reply = handle(line.strip())
        if reply is None:
            break
        print(json.dumps(reply), flush=True)
