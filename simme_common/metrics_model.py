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
    """Mean per-token log-likelihood of each candidate continuation of one prompt (the prompt is encoded once)."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        first = model(input_ids=torch.tensor([prompt_ids], device=device), cache=cache, use_cache=True,
                      logits_to_keep=1).logits[0, -1].float().log_softmax(-1)
        k, width = len(candidates), max(len(c) for c in candidates)
        cache.batch_repeat_interleave(k)
        ids = torch.zeros((k, width), dtype=torch.long, device=device)
        mask = torch.zeros((k, width), dtype=torch.bool, device=device)
        for r, c in enumerate(candidates):
            ids[r, :len(c)] = torch.tensor(c)
            mask[r, :len(c)] = True
        attn = torch.cat([torch.ones((k, len(prompt_ids)), dtype=torch.long, device=device), mask.long()], dim=1)
        positions = torch.arange(len(prompt_ids), len(prompt_ids) + width, device=device).expand(k, -1)
        # Only positions that predict a candidate token are projected on the vocabulary (not the padding).
        keep = torch.zeros((k, width), dtype=torch.bool, device=device)
        keep[:, :-1] = mask[:, 1:]
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=keep).logits
        logp = logits.reshape(-1, logits.shape[-1]).float().log_softmax(-1)
        rows = keep.nonzero()[:, 0]
        picked = logp.gather(-1, ids[:, 1:][keep[:, :-1]].unsqueeze(-1)).squeeze(-1)
    out = []
    for r, c in enumerate(candidates):
        out.append((float(first[c[0]]) + float(picked[rows == r].sum())) / len(c))
    return out


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
