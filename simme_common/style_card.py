"""The owner's style card (02) and the similarity of generated replies' style to it (04)."""

from __future__ import annotations

from typing import Any

from .chat_format import SILENT_REPLY, split_bubbles
from .text_features import (
    LENGTH_CHAR_EDGES, LENGTH_WORD_EDGES, TYPING_GAP_EDGES, _mean, bubbles_distribution, code_switch_rate,
    describe_distribution, distribution_similarity, histogram_probs, language_mix, lexical_diversity,
    message_features, punctuation_profile, quantiles,
)


def build_style_card(
    turns: list[list[str]],
    owner: str = "owner",
    reply_latencies_s: list[float] | None = None,
    typing_gaps_s: list[float] | None = None,
    features: list[dict[str, Any]] | None = None,
    top_k: int = 200,
    top_emoji: int = 20,
) -> dict[str, Any]:
    """The owner's style card (schema_version 1, documented in the README) from their turns of bubbles.

    Args:
        turns: owner turns, each the list of its bubble texts in order (02: history; 04: generated replies).
        owner: the owner's (surrogate) name.
        reply_latencies_s: seconds from the last message of another person to the owner's turn.
        typing_gaps_s: seconds between consecutive bubbles of one owner turn.
        features: precomputed `message_features` of the flattened bubbles (computed here when None).
        top_k: vocabulary size kept; top_emoji: number of emoji kept.
    Returns:
        JSON-serialisable dict; every part that has no data is None ("not enough data").
    """
    texts = [b for t in turns for b in t]
    if features is None:
        features = [message_features(b, with_textblob=True) for b in texts]
    if len(features) != len(texts):
        raise ValueError(f"features has {len(features)} entries for {len(texts)} bubbles")
    turn_feats = _features_per_turn(turns, features)
    gaps = list(typing_gaps_s or [])
    latencies = list(reply_latencies_s or [])
    return {
        "schema_version": 1,
        "owner": owner,
        "n_messages": len(texts),
        "n_turns": len(turn_feats),
        "length": _length_section(features, turn_feats),
        "burst": {
            "bubbles_per_turn": bubbles_distribution([len(tf) for tf in turn_feats]),
            "mean": _mean([len(tf) for tf in turn_feats]),
        },
        "emoji": _emoji_section(features, top_emoji),
        "vocabulary": _vocabulary_section(features, top_k),
        "language": {
            "mix": language_mix([f["language"] for f in features]),
            "code_switch_rate": code_switch_rate([[f["language"] for f in tf] for tf in turn_feats]),
        },
        "punctuation": punctuation_profile(texts),
        "reply_latency_s": {"n": len(latencies), "quantiles": quantiles(latencies)},
        "typing_gap_s": {
            "n": len(gaps), "quantiles": quantiles(gaps),
            "histogram": {"edges": list(TYPING_GAP_EDGES), "probs": histogram_probs(gaps, TYPING_GAP_EDGES)} if gaps else None,
        },
        "sentiment": _sentiment_section(features),
    }


def _features_per_turn(turns: list[list[str]], features: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The flat bubble features cut back into turns; turns without bubbles left out."""
    turn_feats, i = [], 0
    for t in turns:
        turn_feats.append(features[i:i + len(t)])
        i += len(t)
    return [tf for tf in turn_feats if tf]


def _length_section(features: list[dict[str, Any]], turn_feats: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Characters and words per message and per turn."""
    return {
        "chars_per_message": describe_distribution([f["n_chars"] for f in features], LENGTH_CHAR_EDGES),
        "words_per_message": describe_distribution([f["n_words"] for f in features], LENGTH_WORD_EDGES),
        "chars_per_turn": describe_distribution([sum(f["n_chars"] for f in tf) for tf in turn_feats], LENGTH_CHAR_EDGES),
        "words_per_turn": describe_distribution([sum(f["n_words"] for f in tf) for tf in turn_feats], LENGTH_WORD_EDGES),
    }


def _emoji_section(features: list[dict[str, Any]], top_emoji: int) -> dict[str, Any]:
    """Emoji rate, share of messages with emoji or only emoji, and the top emoji's shares."""
    from collections import Counter

    n = len(features)
    emoji_counts = Counter(e for f in features for e in f["emojis"])
    return {
        "rate_per_message": sum(emoji_counts.values()) / n if n else None,
        "share_with_emoji": sum(f["n_emojis"] > 0 for f in features) / n if n else None,
        "emoji_only_share": sum(f["emoji_only"] for f in features) / n if n else None,
        "top": {e: c / sum(emoji_counts.values()) for e, c in emoji_counts.most_common(top_emoji)} or None,
    }


def _vocabulary_section(features: list[dict[str, Any]], top_k: int) -> dict[str, Any]:
    """The top_k words' shares of all tokens and the lexical diversity."""
    from collections import Counter

    tokens = [w for f in features for w in f["words"]]
    return {
        "top": {w: c / len(tokens) for w, c in Counter(tokens).most_common(top_k)} or None,
        "lexical_diversity": lexical_diversity(tokens),
    }


def _sentiment_section(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean VADER and TextBlob scores and the share of messages VADER scored."""
    n = len(features)
    # Features that went through pandas hold NaN instead of None for unscored messages.
    vader = [None if f["vader"] is None or f["vader"] != f["vader"] else f["vader"] for f in features]
    return {
        "vader_compound_mean": _mean(vader),
        "textblob_polarity_mean": _mean([f["textblob"] for f in features]),
        "scored_share": sum(v is not None for v in vader) / n if n else None,
    }


def scorable_reply(text: str) -> str:
    """A reply as scored text: the silent marker scores as an empty reply."""
    return "" if text.strip() == SILENT_REPLY else text


def reply_style_card(replies: list[str]) -> dict[str, Any]:
    """02's style card of a list of owner turns (each split into bubbles; silent/empty turns drop out)."""
    return build_style_card([split_bubbles(r) for r in replies], features=None)


def emoji_profile(card: dict[str, Any]) -> dict[str, float]:
    """Emoji profile of a style card: {"": share of bubbles without emoji, emoji: share with emoji x its share, ...}.

    Emoji beyond the card's top list go to one "other" entry so that the profile sums to 1.
    """
    emoji = (card or {}).get("emoji") or {}
    share = emoji.get("share_with_emoji")
    if share is None:
        return {}
    top = emoji.get("top") or {}
    profile = {"": 1.0 - share, "other": share * max(0.0, 1.0 - sum(top.values())) if top else share}
    for e, p in top.items():
        profile[e] = share * p
    return profile


def style_similarity(generated: dict[str, Any], owner: dict[str, Any], top_k: int = 50) -> dict[str, float | None]:
    """length_similarity, vocab_overlap and emoji_match of a generated-replies style card against the owner's."""
    def hist(card):
        return ((((card or {}).get("length") or {}).get("chars_per_turn") or {}).get("histogram") or {}).get("probs")

    def top_words(card):
        top = (((card or {}).get("vocabulary") or {}).get("top") or {})
        return [w for w, _ in sorted(top.items(), key=lambda kv: -kv[1])[:top_k]]

    gen_h, own_h = hist(generated), hist(owner)
    gen_w, own_w = set(top_words(generated)), top_words(owner)
    own_e = emoji_profile(owner)
    return {
        "length_similarity": distribution_similarity(gen_h, own_h) if gen_h and own_h else (0.0 if own_h else None),
        "vocab_overlap": len(gen_w & set(own_w)) / len(own_w) if own_w else None,
        "emoji_match": distribution_similarity(emoji_profile(generated), own_e) if own_e else None,
    }
