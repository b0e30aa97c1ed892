"""04's model passes: test samples as prompt + target, one prompt forward for perplexity and generation, batched
reply generation."""

from __future__ import annotations

import time
from typing import Any

from .chat_format import chat_token_ids, split_target, stop_token_ids, trim_context, untempered_token_ids
from .sampling import sample_next


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


# Rows of a batch whose real targets are scored together: sorted by target length, so padding stays small.
TARGET_GROUP = 8


def score_and_generate(model, tokenizer, examples: list[dict[str, list[int]]], generate: list[bool], *,
                       max_new_tokens: int = 48, temperature: float = 0.7, top_p: float = 0.95, batch_size: int = 32,
                       seed: int = 42, untempered_stop: bool = True,
                       desc: str | None = None) -> tuple[list[tuple[float, int]], list[dict | None]]:
    """Perplexity terms and generated replies of `eval_example`s with one prompt forward per batch.

    Per batch (longest prompts first, left-padded): the prompt forward fills the KV cache and scores the owner
    tokens inside the context; the real targets are scored on copies of that cache, a few rows of similar target
    length at a time; the reply is sampled from the prompt's cache (seeded top-k 64 + top-p, or greedy at temperature
    0, stop at end-of-turn) where `generate[i]` is true, and a row leaves the batch as soon as its reply ends. So the
    context is encoded once for both jobs. Only owner positions are projected on the vocabulary.

    Returns, in input order, (summed NLL, scored tokens) and {"text", "n_tokens" (incl. the stop token),
    "seconds" (wall time of its batch's prompt forward + generation), "batch"} or None where nothing was generated.
    """
    import torch
    from tqdm.auto import tqdm

    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["prompt_ids"]))
    nll_out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    replies: list[dict | None] = [None] * len(examples)
    rng = torch.Generator().manual_seed(seed)  # same seed, same batches -> base and twin draw from the same stream
    sampling = {"temperature": temperature, "top_p": top_p, "generator": rng, "untempered_stop": untempered_stop}
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
    """Prompts left-padded to one width; the owner positions to score inside them; each row's target and its labels."""
    import torch

    width_p = max(len(e["prompt_ids"]) for e in exs)
    ids = torch.full((len(exs), width_p), pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attn = torch.zeros_like(ids)
    for r, e in enumerate(exs):
        p = len(e["prompt_ids"])
        ids[r, width_p - p:] = torch.tensor(e["prompt_ids"])
        labels[r, width_p - p:width_p - p + min(p, len(e["labels"]))] = torch.tensor(e["labels"][:p], dtype=torch.long)
        attn[r, width_p - p:] = 1
    keep = torch.zeros_like(attn, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100  # position t predicts token t + 1
    device = next(model.parameters()).device
    # The prompt's last position predicts the target's first token: its label is the first target label.
    tail = [([e["prompt_ids"][-1]] + e["target_ids"], e["labels"][len(e["prompt_ids"]) - 1:]) for e in exs]
    return {"ids": ids.to(device), "attn": attn.to(device), "positions": (attn.cumsum(-1) - 1).clamp(min=0).to(device),
            "keep": keep, "labels": labels, "tail": tail, "width_p": width_p, "rows": len(exs)}


def _cache_rows(model, cache, rows: list[int], drop_last: int = 0):
    """A new DynamicCache holding `rows` of `cache` (minus its last `drop_last` positions)."""
    import torch
    from transformers import DynamicCache

    out = DynamicCache(config=model.config)
    index = torch.tensor(rows, device=cache.layers[0].keys.device)
    end = cache.get_seq_length() - drop_last
    for layer, src in enumerate(cache.layers):
        out.update(src.keys[index, :, :end], src.values[index, :, :end], layer)
    return out


def _score_batch(model, b: dict[str, Any]) -> tuple[Any, float, list[tuple[float, int]]]:
    """(KV cache of the prompts, seconds of the prompt forward, (summed NLL, scored tokens) per row).

    The owner turns inside the prompts are scored by the prompt forward. Each row's real target is fed, with the
    prompt's last token before it, on a copy of the prompt cache without that token, a group of rows of similar
    target length at a time: padding every target to the batch's longest would cost several times the tokens.
    """
    import torch
    from transformers import DynamicCache

    ids, attn, positions, wp = b["ids"], b["attn"], b["positions"], b["width_p"]
    keep = b["keep"].to(ids.device)
    cache = DynamicCache(config=model.config)
    start = time.perf_counter()
    sums = torch.zeros(b["rows"], dtype=torch.float64)
    counts = torch.zeros(b["rows"], dtype=torch.long)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=keep).logits
        prompt_s = time.perf_counter() - start
        _add_nll(sums, counts, logits, b["labels"][:, 1:][b["keep"][:, :-1]], b["keep"].nonzero()[:, 0])
        by_length = sorted((r for r in range(b["rows"]) if len(b["tail"][r][0]) > 1), key=lambda r: len(b["tail"][r][0]))
        for g in range(0, len(by_length), TARGET_GROUP):
            rows = by_length[g:g + TARGET_GROUP]
            width = max(len(b["tail"][r][0]) for r in rows)
            t_ids = torch.zeros((len(rows), width), dtype=torch.long)
            t_labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for k, r in enumerate(rows):
                tokens, labels = b["tail"][r]
                t_ids[k, :len(tokens)] = torch.tensor(tokens)
                t_labels[k, :len(labels)] = torch.tensor(labels)
            t_keep = torch.zeros_like(t_labels, dtype=torch.bool)
            t_keep[:, :-1] = t_labels[:, 1:] != -100
            if not t_keep.any():
                continue
            t_mask = torch.tensor([[int(k < len(b["tail"][r][0])) for k in range(width)] for r in rows])
            sub = _cache_rows(model, cache, rows, drop_last=1)
            sub_attn = torch.cat([attn[rows, :-1], t_mask.to(attn)], dim=1)
            sub_pos = positions[rows, -1:] + torch.arange(width, device=ids.device)
            out = model(input_ids=t_ids.to(ids.device), attention_mask=sub_attn, position_ids=sub_pos, cache=sub,
                        use_cache=True, logits_to_keep=t_keep.to(ids.device)).logits
            _add_nll(sums, counts, out, t_labels[:, 1:][t_keep[:, :-1]], torch.tensor(rows)[t_keep.nonzero()[:, 0]])
    return cache, prompt_s, [(float(sums[r]), int(counts[r])) for r in range(b["rows"])]


def _add_nll(sums, counts, logits, targets, rows) -> None:
    """Add the NLL of `targets` under `logits` (kept positions, flattened in row order) to their rows' sums."""
    import torch

    if not len(targets):
        return
    flat = logits.reshape(-1, logits.shape[-1]).float()
    nll = torch.nn.functional.cross_entropy(flat, targets.to(flat.device), reduction="none").cpu().double()
    sums.index_add_(0, rows, nll)
    counts.index_add_(0, rows, torch.ones_like(rows))


def _generate_from_cache(model, tokenizer, b: dict[str, Any], cache, gen_rows: list[int], max_new_tokens: int,
                         sampling: dict) -> list[tuple[str, int, float]]:
    """(text, tokens incl. the stop token, seconds) of the replies sampled for `gen_rows` from the prompt's KV cache.

    One decode step feeds every unfinished row; a row that emitted a stop token leaves the batch (its cache rows are
    dropped), so the batch shrinks to the longest replies instead of padding every row to `max_new_tokens`.
    """
    import torch

    stops = set(stop_token_ids(tokenizer))
    untempered = untempered_token_ids(tokenizer) if sampling["untempered_stop"] else None
    ids, attn, positions = b["ids"], b["attn"], b["positions"]
    start = time.perf_counter()
    cache.crop(-1)  # the prompt's last token is fed again: its logits start the reply
    if len(gen_rows) < b["rows"]:
        cache.batch_select_indices(torch.tensor(gen_rows, device=ids.device))
    active = torch.tensor(gen_rows, device=ids.device)
    step_ids, mask, pos = ids[active, -1:], attn[active], positions[active, -1:]
    alive = list(range(len(gen_rows)))  # output slot of each active row
    new: list[list[int]] = [[] for _ in gen_rows]
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(input_ids=step_ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1]
            tokens = sample_next(logits, sampling["temperature"], sampling["top_p"], sampling["generator"],
                                 untempered).tolist()
            going = []
            for k, (slot, t) in enumerate(zip(alive, tokens)):
                new[slot].append(t)
                if t not in stops and len(new[slot]) < max_new_tokens:
                    going.append(k)
            if not going:
                break
            if len(going) < len(alive):
                keep = torch.tensor(going, device=ids.device)
                cache.batch_select_indices(keep)
                mask, pos = mask[keep], pos[keep]
                alive = [alive[k] for k in going]
            step_ids = torch.tensor([[new[slot][-1]] for slot in alive], device=ids.device)
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=mask.device)], dim=1)
            pos = pos + 1
    seconds = time.perf_counter() - start
    out = []
    for tokens in new:
        n = next((k + 1 for k, t in enumerate(tokens) if t in stops), len(tokens))
        out.append((tokenizer.decode(tokens[:n], skip_special_tokens=True).strip(), n, seconds))
    return out


def perplexity_from_nll(pairs: list[tuple[float, int]]) -> float | None:
    """Token-weighted perplexity exp(sum NLL / sum tokens); None without scored tokens."""
    import math

    tokens = sum(n for _, n in pairs)
    return math.exp(sum(s for s, _ in pairs) / tokens) if tokens else None


def generate_replies(model, tokenizer, contexts: list[list[dict]], *, max_new_tokens: int = 48, temperature: float = 0.7,
                     top_p: float = 0.95, batch_size: int = 16, max_context_tokens: int = 384, seed: int = 42,
                     untempered_stop: bool = True, desc: str | None = None) -> list[dict[str, Any]]:
    """Generate the owner's next turn for each context: batched, left-padded, seeded sampling, stop at end-of-turn.

    Contexts are trimmed (oldest turns first, system prompt kept) to `max_context_tokens`; the batches are those of
    `score_and_generate` with nothing to score. Returns per context {"text", "n_tokens" (incl. the stop token),
    "seconds" (its batch's wall time), "batch"}.
    """
    count = lambda m: len(chat_token_ids(tokenizer, m, add_generation_prompt=True))  # noqa: E731
    examples = [{"prompt_ids": chat_token_ids(tokenizer, trim_context(c, count, max_context_tokens)[0], add_generation_prompt=True),
                 "target_ids": [], "labels": []} for c in contexts]
    _, replies = score_and_generate(model, tokenizer, examples, [True] * len(examples), max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                                    untempered_stop=untempered_stop, desc=desc)
    return replies
