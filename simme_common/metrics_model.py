"""04's metrics of the model itself: ConvAI2 Hits@1 by log-likelihood ranking, fixed-length speed (first-token
time, ms per token) and peak memory of one pass."""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager
from typing import Any

from .metric_defs import HITS_CANDIDATES


def hits_candidates(n: int, seed: int = 42, k: int = HITS_CANDIDATES) -> list[list[int]]:
    """Per context i: [i] + up to k - 1 other contexts' indices (their real replies are the distractors), seeded."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        out.append([i] + rng.sample(others, min(k - 1, len(others))))
    return out


def candidate_loglik(model, prompt_ids: list[int], candidates: list[list[int]]) -> list[float]:
    """Mean per-token log-likelihood of each candidate continuation of one prompt.

    The prompt is encoded once; then all candidates go through one forward, packed one after another on that
    cache, each attending to the prompt and to its own earlier tokens only (a block-diagonal causal mask) and
    positioned right after the prompt. Padding every candidate to the longest one would cost several times the tokens.
    """
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    p, total = len(prompt_ids), sum(len(c) for c in candidates)
    with torch.inference_mode():
        first = model(input_ids=torch.tensor([prompt_ids], device=device), cache=cache, use_cache=True,
                      logits_to_keep=1).logits[0, -1].float().log_softmax(-1)
        ids = torch.tensor([[t for c in candidates for t in c]], device=device)
        owner = torch.tensor([r for r, c in enumerate(candidates) for _ in c], device=device)
        offset = torch.tensor([k for c in candidates for k in range(len(c))], device=device)
        allowed = torch.ones((total, p + total), dtype=torch.bool, device=device)
        allowed[:, p:] = (owner[:, None] == owner[None, :]) & (offset[:, None] >= offset[None, :])
        dtype = next(model.parameters()).dtype  # an additive mask: eager attention adds it, SDPA takes it as is
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
        # Only positions that predict a next token of the same candidate are projected on the vocabulary.
        keep = torch.cat([owner[1:] == owner[:-1], torch.tensor([False], device=device)])
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(p + offset)[None], cache=cache, use_cache=True,
                       logits_to_keep=keep.nonzero()[:, 0]).logits[0]
        picked = logits.float().log_softmax(-1).gather(-1, ids[0, 1:][keep[:-1]].unsqueeze(-1)).squeeze(-1)
        sums = torch.zeros(len(candidates), dtype=torch.float64, device=device).index_add_(0, owner[:-1][keep[:-1]], picked.double())
    return [(float(first[c[0]]) + float(sums[r])) / len(c) for r, c in enumerate(candidates)]


def hits_at_1(model, prompts: list[list[int]], targets: list[list[int]], seed: int = 42, max_contexts: int | None = None,
              desc: str | None = None) -> tuple[list[float], int]:
    """(per context 1.0 when the real reply ranks first among its candidates, number of candidates).

    `prompts[i]` and `targets[i]` are context i's prompt ids and real reply ids (reply + end of turn).
    """
    from tqdm.auto import tqdm

    n = len(prompts)
    cands = hits_candidates(n, seed)
    picked = list(range(n)) if max_contexts is None or max_contexts >= n else sorted(random.Random(seed).sample(range(n), max_contexts))
    hits = []
    for i in tqdm(picked, desc=desc, disable=desc is None, leave=False):
        scores = candidate_loglik(model, prompts[i], [targets[j] for j in cands[i]])
        hits.append(float(all(scores[0] > s for s in scores[1:])))
    return hits, len(cands[0]) if cands else 0


def fixed_length_speed(model, tokenizer, prompts: list[list[int]], new_tokens: int = 32) -> dict[str, float | None]:
    """first_token_ms and ms_per_token (medians over `prompts`, batch 1, greedy, exactly `new_tokens` tokens)."""
    import statistics

    import torch

    device = next(model.parameters()).device
    first, per_token = [], []
    for p in prompts:
        ids = torch.tensor([p], device=device)
        kw = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)  # warm-up for this length
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            t1 = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
            t2 = time.perf_counter()
        first.append((t1 - t0) * 1000)
        per_token.append(((t2 - t1) - (t1 - t0)) * 1000 / max(1, new_tokens - 1))
    return {"first_token_ms": statistics.median(first) if first else None,
            "ms_per_token": statistics.median(per_token) if per_token else None}


def _rss_mb() -> float:
    """Current resident memory of this process, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@contextmanager
def peak_memory(cuda: bool):
    """Yields a dict whose "mb" is, after the block, the peak of this block alone: allocated GPU memory, or RSS
    sampled every 20 ms (CPU's ru_maxrss only grows, so it would charge the base pass to the twin)."""
    result: dict[str, Any] = {"mb": None}
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
        yield result
        result["mb"] = torch.cuda.max_memory_allocated() / 2**20
        return
    peak = [_rss_mb()]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["mb"] = max(peak[0], _rss_mb())
