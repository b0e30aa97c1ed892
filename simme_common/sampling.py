"""How a reply's next token is drawn, the same in 04 and in the app: temperature, top-k, top-p, and the end of the
turn and of each bubble (`chat_format.untempered_token_ids`) sampled at its untempered probability."""

from __future__ import annotations

from typing import Any

# Sampled replies keep the 64 likeliest tokens before top-p, in the app (transformers and both llama.cpp paths) and
# in 04's sampler alike: top-p over the whole 49k vocabulary sorts it for every token and row (10 ms measured, as long as a decode step
# of a 135M model on CPU; 0.3 ms with this cut), and the nucleus of a chat model at these temperatures lies far inside it.
SAMPLE_TOP_K = 64


def untempered_stop_logits(logits, temperature: float, stop_ids: list[int]):
    """`logits` (rows x vocab, before temperature) as float32, with each stop token's logit moved so that after the
    division by `temperature` and the softmax it has its probability at temperature 1; the other tokens keep theirs.

    A temperature below 1 sharpens every choice, the choice to end the turn included: the likeliest short replies
    ("ok", "lol") win more often, long replies lose, and the replies come out shorter than the owner's. With this,
    temperature shapes what is said; when the turn ends is sampled as the model predicts it.
    """
    import torch

    z = logits.float()
    if not stop_ids or temperature <= 0 or temperature == 1:
        return z
    stops = torch.as_tensor(list(stop_ids), device=z.device)
    log_p = z.log_softmax(-1).index_select(-1, stops)
    p_stop = log_p.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-6)
    rest = (z / temperature).index_fill(-1, stops, float("-inf")).logsumexp(-1, keepdim=True)
    # After / temperature and the softmax, stop s gets p_s / (1 - P) * S / (S + P / (1 - P) * S) = p_s, where P is
    # the stops' untempered mass and S the tempered mass of every other token.
    return z.index_copy(-1, stops, temperature * (log_p - torch.log1p(-p_stop) + rest))


def sample_next(logits, temperature: float, top_p: float, generator=None, stop_ids: list[int] | None = None):
    """Next token per row: greedy at temperature 0, else top-k (`SAMPLE_TOP_K`) then top-p at `temperature`, seeded
    by `generator`; with `stop_ids`, the stop tokens keep their untempered probability (`untempered_stop_logits`)."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    scaled = untempered_stop_logits(logits, temperature, stop_ids or []) / temperature
    values, indices = scaled.topk(min(SAMPLE_TOP_K, logits.shape[-1]), dim=-1)
    probs = values.softmax(-1)
    outside = probs.cumsum(-1) - probs > top_p  # tokens after the nucleus is already full (the first always stays)
    probs = probs.masked_fill(outside, 0.0)
    picked = torch.multinomial(probs, 1, generator=generator)
    return indices.gather(-1, picked).squeeze(-1)


def stop_processors(settings: dict[str, Any], stop_ids: list[int]) -> list:
    """The app's logits processors for `settings` (transformers `LogitsProcessor`s, also callable by llama-cpp-python
    as (input_ids, numpy logits) -> logits): the untempered stop where it is on and the reply is sampled."""
    temperature = settings["temperature"]
    if not settings.get("untempered_stop") or temperature <= 0 or temperature == 1 or not stop_ids:
        return []
    return [UntemperedStop(temperature, stop_ids)]


class UntemperedStop:
    """`untempered_stop_logits` as a logits processor, before the sampler's temperature: transformers calls it
    with (input_ids, scores tensor), llama-cpp-python's custom sampler with (input_ids, numpy logits)."""

    def __init__(self, temperature: float, stop_ids: list[int]):
        self.temperature, self.stop_ids = float(temperature), sorted(stop_ids)

    def __call__(self, input_ids, scores):
        import numpy as np
        import torch

        if isinstance(scores, np.ndarray):
            row = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))[None]
            return untempered_stop_logits(row, self.temperature, self.stop_ids)[0].numpy()
        return untempered_stop_logits(scores, self.temperature, self.stop_ids).to(scores.dtype)


def llama_sampler(llama, settings: dict[str, Any], stop_ids: list[int], history: list[int]):
    """A llama-cpp-python sampler chain for a request's settings that draws as transformers' `generate` and 04's
    `sample_next` do: the repetition penalty over every token so far (`history`, the prompt included), the untempered
    stop, top-k `SAMPLE_TOP_K`, temperature, top-p on the tempered probabilities, a draw seeded by settings["seed"]
    (random when None: a fixed seed would give every unseeded request the same sample); greedy at temperature 0.
    llama-cpp-python's own chain (`Llama._init_sampler`) takes top-p before temperature, which keeps a wider nucleus
    at temperatures below 1, and penalizes only the last 64 generated tokens."""
    import ctypes
    import random

    import numpy as np
    from llama_cpp import _internals

    chain = _internals.LlamaSampler()
    penalty = float(settings["repetition_penalty"])
    if penalty != 1.0:
        chain.add_penalties(llama.n_vocab(), llama.n_ctx(), penalty, 0.0, 0.0)
    processors = stop_processors(settings, stop_ids)
    if processors:
        row = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)

        # The penalty changes logits in place: the candidates are still the whole vocabulary in token-id order,
        # the layout the processors read.
        def apply(candidates):
            size, data = candidates.contents.size, candidates.contents.data
            view = np.recarray((size,), dtype=row, buf=(type(data.contents) * size).from_address(ctypes.addressof(data.contents)))
            for processor in processors:
                view.logit[:] = processor(None, view.logit)

        chain.add_custom(apply)
    if settings["temperature"] <= 0:
        chain.add_greedy()
    else:
        chain.add_top_k(SAMPLE_TOP_K)
        chain.add_temp(float(settings["temperature"]))
        chain.add_top_p(float(settings["top_p"]), 1)
        chain.add_dist(int(settings["seed"]) if settings["seed"] is not None else random.randrange(2**31))
    if penalty != 1.0:
        for token in history:
            chain.accept(int(token))
    return chain
