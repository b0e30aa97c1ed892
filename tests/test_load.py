"""Load: 16 gradio_client chats at once against the real app (`python app.py`, the default model on llama.cpp, its
batched decoding) for about a minute. Asserts no errors and memory that stays flat after warm-up; prints the p50/p95
time to the first output of a reply. Speed targets live in bench/bench_generate.py, not here.

Run: .venv/bin/python -m pytest -q -s tests/test_load.py
     LOAD_TEST_SECONDS=300 .venv/bin/python -m pytest -q -s tests/test_load.py     # a longer run
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import app_server, wait_until_serving

CLIENTS = 16
SECONDS = float(os.environ.get("LOAD_TEST_SECONDS", "60"))  # CI: one minute
WARM_UP = 0.25  # the first quarter of the run fills the KV slots, caches and Gradio's worker threads
TOPICS = ["dinner tomorrow", "the hike on saturday", "the concert tickets", "your sister's birthday",
          "the board game night", "the trip to the coast", "coffee after work", "the new flat"]


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` (MiB)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def chat_until(url: str, client_id: int, deadline: float, firsts: list, errors: list) -> int:
    """One user keeping one chat going (each reply joins the history) until `deadline`; returns the replies got."""
    from gradio_client import Client

    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120}, download_files=False, analytics_enabled=False)
    history: list = []
    replies = 0
    while time.monotonic() < deadline:
        message = f"hey, are we still on for {TOPICS[(client_id + replies) % len(TOPICS)]}? ({client_id}.{replies})"
        start, first = time.monotonic(), None
        try:
            job = client.submit(message, history, "One-on-one", f"Friend{client_id}", "", "", "", 0.7, False, 0.9,
                                1.1, 32, False, client_id * 1000 + replies, api_name="/chat")
            for update in job:  # (history, box) as the reply streams; the first one holds only the user's bubble
                if first is None and len(update[0]) > len(history) + 1:
                    first = time.monotonic() - start
            new_history, box = job.result(timeout=120)
            assert box == "" and len(new_history) > len(history) + 1, "the reply is missing"
        except Exception as err:  # counted and named; the run goes on
            errors.append(f"{type(err).__name__}: {str(err)[:200]}")
            continue
        firsts.append((time.monotonic(), first if first is not None else time.monotonic() - start))
        history = new_history
        replies += 1
    return replies


def run_load(url: str, pid: int, clients: int, seconds: float) -> dict:
    """`clients` chats at once for `seconds`: first-output times after warm-up, errors, RSS after warm-up and at the end."""
    begin = time.monotonic()
    deadline, warm_at = begin + seconds, begin + WARM_UP * seconds
    firsts: list[tuple[float, float]] = []
    errors: list[str] = []
    rss: list[tuple[float, float]] = []
    done = threading.Event()

    def sample_memory():
        while not done.wait(1.0):
            rss.append((time.monotonic(), rss_mib(pid)))

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(clients) as pool:
        replies = sum(pool.map(lambda c: chat_until(url, c, deadline, firsts, errors), range(clients)))
    done.set()
    sampler.join()
    steady = [f for t, f in firsts if t >= warm_at]
    return {"replies": replies, "errors": errors, "firsts": steady, "seconds": time.monotonic() - begin,
            "rss_warm": max(r for t, r in rss if t <= warm_at), "rss_end": rss[-1][1], "rss_peak": max(r for _, r in rss)}


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_sixteen_concurrent_chats_for_a_minute_without_errors_or_growing_memory(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    log = tmp_path / "app.log"
    env = {**os.environ, "SIMME_ADAPTER": str(tmp_path / "no_adapter"), "SIMME_BACKEND": "llama.cpp",
           "SIMME_THREADS": "2", "SIMME_CONCURRENCY": str(CLIENTS), "SIMME_PREPARED_DIR": str(tmp_path),
           "SIMME_ANALYSIS_DIR": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False"}
    with app_server(env, log) as (proc, url):
        wait_until_serving(proc, url, log)
        out = run_load(url, proc.pid, CLIENTS, SECONDS)
        assert proc.poll() is None, f"app.py died under load:\n{log.read_text()[-3000:]}"
    firsts = out["firsts"]
    print(f"\nload: {CLIENTS} clients for {out['seconds']:.0f} s: {out['replies']} replies, {len(out['errors'])} errors; "
          f"first output after warm-up p50 {statistics.median(firsts):.2f} s / p95 {percentile(firsts, 0.95):.2f} s "
          f"({len(firsts)} replies); RSS after warm-up {out['rss_warm']:.0f} MiB, end {out['rss_end']:.0f} MiB, "
          f"peak {out['rss_peak']:.0f} MiB")
    assert not out["errors"], out["errors"][:5]
    assert len(firsts) >= CLIENTS  # every client got replies after warm-up
    assert out["rss_end"] <= 1.10 * out["rss_warm"], "memory kept growing after warm-up"
