"""04's model passes: test samples as prompt + target, one prompt forward for perplexity and generation, batched
reply generation."""

from __future__ import annotations

import time
from typing import Any

from .chat_format import chat_token_ids, split_target, stop_token_ids, trim_context


def eval_example(tokenizer, messages: list[dict], max_context_tokens: int, max_length: int) -> dict[str, list[int]]:
    """One test sample as the prompt the model answers from and the owner's real turn after it.

    The context is trimmed like a generation prompt (oldest turns first, system prompt kept) to
    `max_context_tokens`; `labels` marks owner tokens ({% generation %} mask) over prompt + target, so
    perplexity covers the owner's earlier turns in the context too, as in training. The target is cut so
    prompt + target <= `max_length`.
    """
    context, _ = split_target(messages)
    ctx, _ = trim_context(context, lambda m: len(chat_token_ids(tokenizer, m, add_generation_prompt=True)), max_context_tokens)
    prompt = chat_token_ids(tokenizer, ctx, add_generation_prompt=True)
    enc = tokenizer.apply_chat_template(ctx + messages[-1:], return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    if ids[:len(prompt)] != prompt:
        raise ValueError("the chat template's generation prompt is not a prefix of the rendered owner turn")
    labels = [i if m else -100 for i, m in zip(ids, mask)]
    end = max((k + 1 for k, lab in enumerate(labels) if lab != -100), default=len(prompt) + 1)  # drop the template's trailing newline
    end = min(end, max(max_length, len(prompt) + 1))
    cut = max(0, len(prompt) - max_context_tokens)  # one turn longer than the budget: keep its end
    return {"prompt_ids": prompt[cut:], "target_ids": ids[len(prompt):end], "labels": labels[cut:end]}


def score_and_generate(model, tokenizer, examples: list[dict[str, list[int]]], generate: list[bool], *,
                       max_new_tokens: int = 48, temperature: float = 0.7, top_p: float = 0.95, batch_size: int = 32,
                       seed: int = 42, desc: str | None = None) -> tuple[list[tuple[float, int]], list[dict | None]]:
    """Perplexity terms and generated replies of `eval_example`s with one prompt forward per batch.

    Per batch (longest prompts first, left-padded): the prompt forward fills the KV cache and scores the owner
    tokens inside the context; the real target is scored on top of that cache; the cache is cropped back to the
    prompt and `generate` samples the reply from it (seeded, stop at end-of-turn) where `generate[i]` is true.
    So the context is encoded once for both jobs. Only owner positions are projected on the vocabulary.

    Returns, in input order, (summed NLL, scored tokens) and {"text", "n_tokens" (incl. the stop token),
    "seconds" (wall time of its batch's prompt forward + generation), "batch"} or None where nothing was generated.
    """
    from tqdm.auto import tqdm
    from transformers import set_seed

    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["prompt_ids"]))
    nll_out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    replies: list[dict | None] = [None] * len(examples)
    set_seed(seed)  # same seed, same batches -> base and twin draw the same random stream
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, leave=False):
        idx = order[s:s + batch_size]
        batch = _batch_tensors(model, tokenizer.pad_token_id, [examples[i] for i in idx])
        cache, prompt_s, nll = _score_batch(model, batch)
        for r, i in enumerate(idx):
            nll_out[i] = nll[r]
        gen_rows = [r for r, i in enumerate(idx) if generate[i]]
        if gen_rows:
            texts = _generate_from_cache(model, tokenizer, batch, cache, gen_rows, max_new_tokens, sampling)
            for row, (text, n, seconds) in zip(gen_rows, texts):
                replies[idx[row]] = {"text": text, "n_tokens": n, "seconds": prompt_s + seconds, "batch": s // batch_size}
    return nll_out, replies


def _batch_tensors(model, pad: int, exs: list[dict[str, list[int]]]) -> dict[str, Any]:
    """Prompts left-padded to one width, targets right-padded after them; the owner positions to score."""
    import torch

    width_p, width_t = max(len(e["prompt_ids"]) for e in exs), max(len(e["target_ids"]) for e in exs)
    ids = torch.full((len(exs), width_p + width_t), pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attn = torch.zeros_like(ids)
    for r, e in enumerate(exs):
        p, t = len(e["prompt_ids"]), len(e["target_ids"])
        ids[r, width_p - p:width_p + t] = torch.tensor(e["prompt_ids"] + e["target_ids"])
        labels[r, width_p - p:width_p - p + len(e["labels"])] = torch.tensor(e["labels"], dtype=torch.long)
        attn[r, width_p - p:width_p + t] = 1
    keep = torch.zeros_like(attn, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100  # position t predicts token t + 1
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    device = next(model.parameters()).device
    return {"ids": ids.to(device), "attn": attn.to(device), "positions": (attn.cumsum(-1) - 1).clamp(min=0).to(device),
            "keep": keep, "targets": targets, "width_p": width_p, "width_t": width_t, "rows": len(exs)}


def _score_batch(model, b: dict[str, Any]) -> tuple[Any, float, list[tuple[float, int]]]:
    """(KV cache of prompt + target, seconds of the prompt forward, (summed NLL, scored tokens) per row)."""
    import torch
    from transformers import DynamicCache

    ids, attn, positions, wp = b["ids"], b["attn"], b["positions"], b["width_p"]
    keep = b["keep"].to(ids.device)
    cache = DynamicCache(config=model.config)
    start = time.perf_counter()
    logits = []
    with torch.inference_mode():
        logits.append(model(input_ids=ids[:, :wp], attention_mask=attn[:, :wp], position_ids=positions[:, :wp],
                            cache=cache, use_cache=True, logits_to_keep=keep[:, :wp]).logits)
        prompt_s = time.perf_counter() - start
        if b["width_t"]:
            logits.append(model(input_ids=ids[:, wp:], attention_mask=attn, position_ids=positions[:, wp:],
                                cache=cache, use_cache=True, logits_to_keep=keep[:, wp:]).logits)
    flat = torch.cat([x.reshape(-1, x.shape[-1]) for x in logits])
    keep, targets = b["keep"], b["targets"]
    scored = torch.cat([targets[:, :wp][keep[:, :wp]], targets[:, wp:][keep[:, wp:]]])
    nll = torch.nn.functional.cross_entropy(flat.float(), scored.to(flat.device), reduction="none").cpu()
    rows = torch.cat([keep[:, :wp].nonzero()[:, 0], keep[:, wp:].nonzero()[:, 0]])
    per_row = [(float(nll[rows == r].sum()), int((rows == r).sum())) for r in range(b["rows"])]
    return cache, prompt_s, per_row


def _generate_from_cache(model, tokenizer, b: dict[str, Any], cache, gen_rows: list[int], max_new_tokens: int,
                         sampling: dict) -> list[tuple[str, int, float]]:
    """(text, tokens incl. the stop token, seconds) of the replies sampled for `gen_rows` from the prompt's KV cache."""
    import torch

    stops = stop_token_ids(tokenizer)
    ids, attn, wp = b["ids"], b["attn"], b["width_p"]
    start = time.perf_counter()
    cache.crop(-(b["width_t"] + 1))  # back to the prompt minus its last token, which generate feeds again
    if len(gen_rows) < b["rows"]:
        cache.batch_select_indices(torch.tensor(gen_rows, device=ids.device))
    with torch.inference_mode():
        seqs = model.generate(input_ids=ids[gen_rows, :wp], attention_mask=attn[gen_rows, :wp], cache=cache,
                              max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                              **sampling)
    seconds = time.perf_counter() - start
    out = []
    for r in range(len(gen_rows)):
        new = seqs[r, wp:].tolist()
        n = next((k + 1 for k, t in enumerate(new) if t in stops), len(new))
        out.append((tokenizer.decode(new[:n], skip_special_tokens=True).strip(), n, seconds))
    return out


def perplexity_from_nll(pairs: list[tuple[float, int]]) -> float | None:
    """Token-weighted perplexity exp(sum NLL / sum tokens); None without scored tokens."""
    import math

    tokens = sum(n for _, n in pairs)
    return math.exp(sum(s for s, _ in pairs) / tokens) if tokens else None


def generate_replies(model, tokenizer, contexts: list[list[dict]], *, max_new_tokens: int = 48, temperature: float = 0.7,
                     top_p: float = 0.95, batch_size: int = 16, max_context_tokens: int = 384, seed: int = 42,
                     desc: str | None = None) -> list[dict[str, Any]]:
    """Generate the owner's next turn for each context: batched, left-padded, seeded sampling, stop at end-of-turn.

    Contexts are trimmed (oldest turns first, system prompt kept) to `max_context_tokens`; the batches are those of
    `score_and_generate` with nothing to score. Returns per context {"text", "n_tokens" (incl. the stop token),
    "seconds" (its batch's wall time), "batch"}.
    """
    count = lambda m: len(chat_token_ids(tokenizer, m, add_generation_prompt=True))  # noqa: E731
    examples = [{"prompt_ids": chat_token_ids(tokenizer, trim_context(c, count, max_context_tokens)[0], add_generation_prompt=True),
                 "target_ids": [], "labels": []} for c in contexts]
    _, replies = score_and_generate(model, tokenizer, examples, [True] * len(examples), max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed, desc=desc)
    return replies
