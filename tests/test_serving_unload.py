"""Unloading a twin: the app replaces adapter B by loading the new twin and closing the old one, so memory and
threads stay those of one twin (TwinModel.close, ModelThread.close).

Run: .venv/bin/python -m pytest -q tests/test_serving_unload.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import simme_common as sc

ROOT = Path(__file__).resolve().parents[1]


LLAMA_LOADS = """
import json, sys
import simme_common as sc
from pathlib import Path

def usage():
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"])

twin, seen = None, []
for _ in range(10):  # as app.load_b: the new twin is loaded, then the previous one closed
    new = sc.load_twin(None, None, backend="llama.cpp", llama=sc.LlamaCppOptions(n_threads=2))
    new.generate([{"role": "user", "content": "hi"}], temperature=0, max_new_tokens=4, use_cache=False)
    if twin is not None:
        twin.close()
    twin = new
    seen.append(usage())
print(json.dumps([seen[0], seen[-1]]))
"""


@pytest.mark.llama_cpp
def test_ten_llama_cpp_loads_keep_memory_and_threads_of_one():
    """The default model on llama.cpp (in a child process: native code), loaded 10 times as adapter B is: each load
    leaked about 220 MB and 2 threads before TwinModel.close."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    done = subprocess.run([sys.executable, "-c", LLAMA_LOADS], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    (rss1, threads1), (rss10, threads10) = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"llama.cpp twin: RSS after 1 load {rss1:.0f} MiB, after 10 {rss10:.0f} MiB; threads {threads1} -> {threads10}")
    assert rss10 <= 1.10 * rss1 and threads10 == threads1


def test_closed_twin_frees_its_model_and_refuses_requests(tiny_model_dir):
    twin = sc.load_twin(str(tiny_model_dir), None, backend="transformers")  # its own: this test closes it
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    twin.generate(msgs, temperature=0, max_new_tokens=2)
    twin.close()
    assert twin.model is None and not twin._prefixes
    with pytest.raises(RuntimeError, match="unloaded"):
        twin.generate(msgs, temperature=0, max_new_tokens=2, use_cache=False)
    thread = sc.ModelThread()
    assert thread.call(lambda: 41 + 1) == 42
    thread.close()
    assert not thread._thread.is_alive()
    with pytest.raises(RuntimeError):
        thread.submit(lambda: None)
