"""02's statistics over the messages table: turns, chat labels, volume, time, words, language and sentiment."""

from __future__ import annotations

from typing import Any

from .chat_format import CHAT_TYPES
from .runtime import UserError
from .style_card import build_style_card
from .text_features import _mean, code_switch_rate, language_mix, punctuation_profile, quantiles, stop_words

# Per-message feature columns the style card reads (02's Dataset.map adds them to the messages table).
FEATURE_COLUMNS = ("n_chars", "words", "n_words", "emojis", "n_emojis", "emoji_only", "language", "vader", "textblob")


def owner_turns(df, burst_seconds: float | None = None) -> "Any":
    """Owner turns of a messages table (consecutive owner messages of one chat session), with latency and gaps.

    Args:
        df: pandas DataFrame with chat_id, session_id, is_owner, timestamp_ms (any order).
        burst_seconds: when set, an owner gap longer than this also starts a new turn (01's `burst_seconds`).
    Returns:
        (df sorted by chat, session and time with a `turn_id` column, where owner rows share the id of
        their turn and others get -1; turns DataFrame with turn_id, chat_id, session_id, start_ms,
        n_bubbles, reply_latency_s (NaN when the owner opened the session); typing gaps in seconds).
    """
    import numpy as np
    import pandas as pd

    df = df.sort_values(["chat_id", "session_id", "timestamp_ms"], kind="stable").reset_index(drop=True)
    if df.empty:
        turns = pd.DataFrame(columns=["turn_id", "chat_id", "session_id", "start_ms", "n_bubbles", "reply_latency_s"])
        return df.assign(turn_id=pd.Series(dtype="int64")), turns, []
    same_session = (df["chat_id"].eq(df["chat_id"].shift())) & (df["session_id"].eq(df["session_id"].shift()))
    new_run = ~same_session | df["is_owner"].ne(df["is_owner"].shift())
    if burst_seconds is not None:
        new_run |= df["timestamp_ms"].diff().fillna(0).gt(burst_seconds * 1000)
    df["turn_id"] = np.where(df["is_owner"], new_run.cumsum(), -1)
    own = df[df["is_owner"]]
    turns = own.assign(row=own.index).groupby("turn_id", sort=True).agg(
        chat_id=("chat_id", "first"), session_id=("session_id", "first"), start_ms=("timestamp_ms", "min"),
        n_bubbles=("timestamp_ms", "size"), first_row=("row", "first"),
    ).reset_index()
    prev = turns["first_row"] - 1
    # A reply follows someone else's message in the same session (not the owner's own earlier turn).
    valid = ((prev >= 0) & same_session.reindex(turns["first_row"]).to_numpy()
             & ~df["is_owner"].reindex(prev.clip(lower=0)).to_numpy())
    prev_ts = df["timestamp_ms"].reindex(prev.where(valid, 0)).to_numpy()
    turns["reply_latency_s"] = np.where(valid, (turns["start_ms"].to_numpy() - prev_ts) / 1000.0, np.nan)
    gaps = own["timestamp_ms"].diff()[own["turn_id"].eq(own["turn_id"].shift())] / 1000.0
    return df, turns.drop(columns="first_row"), gaps.astype(float).tolist()


def chat_labels(df) -> dict[str, str]:
    """Display name per chat_id: the (surrogate) partner of a one-on-one chat, "group N" for groups by size.

    chat_id may hold a folder name with the real name in it, so it never appears in the report.
    """
    from collections import Counter

    labels: dict[str, str] = {}
    sizes = df.groupby("chat_id").size().sort_values(ascending=False, kind="stable")
    counts = df[~df["is_owner"]].groupby(["chat_id", "sender"]).size().reset_index(name="n")
    top = counts.sort_values(["chat_id", "n"], ascending=[True, False], kind="stable").drop_duplicates("chat_id")
    others = dict(zip(top["chat_id"], top["sender"]))
    types = df.groupby("chat_id")["chat_type"].first().to_dict()
    n_group = n_solo = 0
    used: Counter[str] = Counter()
    for chat_id in sizes.index:
        if types[chat_id] == "group":
            n_group += 1
            labels[chat_id] = f"group {n_group}"
        else:
            n_solo += 1
            name = str(others.get(chat_id, f"chat {n_solo}"))
            # The same partner can own several threads (archived, E2EE continuation): keep labels unique.
            used[name] += 1
            labels[chat_id] = name if used[name] == 1 else f"{name} ({used[name]})"
    return labels


def add_local_time(df, timezone: str = "UTC"):
    """Add `local` (tz-aware datetime), `month` ("YYYY-MM"), `hour` and `weekday` (0 = Monday) columns."""
    import pandas as pd

    try:
        local = pd.to_datetime(df["timestamp_ms"], unit="ms", utc=True).dt.tz_convert(timezone)
    except Exception as err:  # zoneinfo raises several types for a bad name
        raise UserError(f"--timezone {timezone!r} is not a known IANA time zone (e.g. UTC, Asia/Ho_Chi_Minh): {err}") from None
    return df.assign(local=local, month=local.dt.strftime("%Y-%m"), hour=local.dt.hour, weekday=local.dt.day_of_week)


def volume_stats(df, labels: dict[str, str], top_n: int = 10) -> dict[str, Any]:
    """Messages per month (owner vs others), top chats by messages, one-on-one vs group share."""
    monthly = df.groupby(["month", "is_owner"]).size().unstack(fill_value=0).reindex(columns=[True, False], fill_value=0)
    per_chat = df.groupby(["chat_id", "is_owner"]).size().unstack(fill_value=0).reindex(columns=[True, False], fill_value=0)
    per_chat = per_chat.assign(total=per_chat.sum(axis=1)).sort_values("total", ascending=False, kind="stable").head(top_n)
    share = df["chat_type"].value_counts(normalize=True)
    return {
        "n_messages": int(len(df)), "n_owner": int(df["is_owner"].sum()), "n_chats": int(df["chat_id"].nunique()),
        "monthly": {"months": monthly.index.tolist(), "owner": monthly[True].astype(int).tolist(),
                    "others": monthly[False].astype(int).tolist()},
        "top_chats": [{"chat": labels[c], "owner": int(r[True]), "others": int(r[False])} for c, r in per_chat.iterrows()],
        "chat_type_share": {t: float(share.get(t, 0.0)) for t in CHAT_TYPES},
    }


def time_stats(df, turns) -> dict[str, Any]:
    """Owner hour x weekday counts, hourly activity (owner vs others), reply latency, session starters."""
    import numpy as np

    own = df[df["is_owner"]]
    heat = np.zeros((7, 24), dtype=int)
    np.add.at(heat, (own["weekday"].to_numpy(dtype=int), own["hour"].to_numpy(dtype=int)), 1)
    hourly = lambda d: np.bincount(d["hour"].to_numpy(dtype=int), minlength=24).tolist()  # noqa: E731
    lat = turns["reply_latency_s"].dropna().to_numpy(dtype=float)
    first = df.groupby(["chat_id", "session_id"], sort=False).head(1)
    by_type = first.groupby("chat_type")["is_owner"].mean()
    return {
        "heatmap_weekday_hour": heat.tolist(),
        "hourly": {"owner": hourly(own), "others": hourly(df[~df["is_owner"]])},
        "reply_latency_s": {"n": int(len(lat)), "mean": float(lat.mean()) if len(lat) else None,
                            "quantiles": quantiles(lat.tolist())},
        "session_starters": {"n_sessions": int(len(first)),
                             "owner_share": float(first["is_owner"].mean()) if len(first) else None,
                             "owner_share_by_chat_type": {t: float(v) for t, v in by_type.items()}},
    }


def word_stats(token_lists: list[list[str]], top_n: int = 25, min_collocation_freq: int = 3) -> dict[str, Any]:
    """Top words (no stop words), bigrams and trigrams (not all stop words) and likelihood-ratio collocations."""
    from nltk import FreqDist
    from nltk.collocations import BigramAssocMeasures, BigramCollocationFinder
    from nltk.util import ngrams

    stops = stop_words()
    words = FreqDist(w for toks in token_lists for w in toks if w not in stops and len(w) > 1)
    grams = {n: FreqDist(g for toks in token_lists for g in ngrams(toks, n) if not all(w in stops for w in g)) for n in (2, 3)}
    finder = BigramCollocationFinder.from_documents(token_lists)
    finder.apply_freq_filter(min_collocation_freq)
    finder.apply_word_filter(lambda w: w in stops)
    colloc = finder.nbest(BigramAssocMeasures.likelihood_ratio, top_n) if finder.ngram_fd else []
    n_tokens = sum(len(t) for t in token_lists)
    return {
        "n_tokens": n_tokens, "n_types": len({w for t in token_lists for w in t}),
        "top_words": [[w, c] for w, c in words.most_common(top_n)],
        "top_bigrams": [[" ".join(g), c] for g, c in grams[2].most_common(top_n)],
        "top_trigrams": [[" ".join(g), c] for g, c in grams[3].most_common(top_n)],
        "collocations": [" ".join(g) for g in colloc],
    }


def language_stats(df, turns_languages: list[list[str]], labels: dict[str, str], top_n: int = 10) -> dict[str, Any]:
    """Language mix of owner and others, code-switch rate, and the owner's mix per chat (largest chats)."""
    own = df[df["is_owner"]]
    per_chat = []
    for chat_id in own["chat_id"].value_counts().index[:top_n]:
        langs = own.loc[own["chat_id"] == chat_id, "language"].tolist()
        per_chat.append({"chat": labels[chat_id], "n": len(langs), "mix": language_mix(langs)})
    return {
        "owner_mix": language_mix(own["language"].tolist()),
        "others_mix": language_mix(df.loc[~df["is_owner"], "language"].tolist()),
        "code_switch_rate": code_switch_rate(turns_languages),
        "owner_mix_per_chat": per_chat,
    }


def sentiment_stats(df) -> dict[str, Any]:
    """VADER and TextBlob means (English/mixed only), scored share, and monthly VADER means owner vs others."""
    scored = df[df["vader"].notna()]
    monthly = scored.groupby(["month", "is_owner"])["vader"].mean().unstack().reindex(columns=[True, False])
    own = df[df["is_owner"]]
    clean = lambda s: [None if v != v else float(v) for v in s]  # noqa: E731  NaN -> None for JSON
    return {
        "owner_vader_mean": _mean(own["vader"].dropna().tolist()),
        "owner_textblob_mean": _mean(own["textblob"].dropna().tolist()),
        "others_vader_mean": _mean(df.loc[~df["is_owner"], "vader"].dropna().tolist()),
        "scored_share": {"owner": float(own["vader"].notna().mean()) if len(own) else None,
                         "others": float(df.loc[~df["is_owner"], "vader"].notna().mean()) if (~df["is_owner"]).any() else None},
        "unscored_vietnamese_owner": int((own["language"] == "vi").sum()),
        "monthly": {"months": monthly.index.tolist(), "owner": clean(monthly[True]), "others": clean(monthly[False])},
    }


def owner_name(df) -> str:
    """The owner's (surrogate) name: the sender name of most of their messages ("owner" if they wrote none)."""
    names = df.loc[df["is_owner"], "sender"].mode()
    return str(names.iloc[0]) if len(names) else "owner"


def analyze_messages(df, turns, gaps: list[float], top_k: int = 200, top_n: int = 20,
                     min_collocation_freq: int = 3) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """The owner's style card, the stats sections and the reply latencies of a featured messages table.

    Args:
        df, turns, gaps: the output of `owner_turns` on a table with local time and FEATURE_COLUMNS.
        top_k: style card vocabulary size; top_n: rows of the top lists; min_collocation_freq: see word_stats.
    Returns:
        (style card, {volume, time, words, language, sentiment, punctuation}, reply latencies in seconds).
    """
    own = df[df["is_owner"]]
    turn_rows = own.groupby("turn_id", sort=True).indices
    texts = own["text"].to_numpy()  # numpy fancy indexing: pandas .iloc per turn costs ~1 ms x 70k turns
    turn_texts = [texts[idx].tolist() for idx in turn_rows.values()]
    features = own[list(FEATURE_COLUMNS)].to_dict("records")
    feats_in_turn_order = [features[i] for idx in turn_rows.values() for i in idx]
    latencies = turns["reply_latency_s"].dropna().tolist()
    card = build_style_card(turn_texts, owner_name(df), latencies, gaps, feats_in_turn_order, top_k=top_k)
    labels = chat_labels(df)
    turn_languages = [[features[i]["language"] for i in idx] for idx in turn_rows.values()]
    stats = {
        "volume": volume_stats(df, labels, top_n),
        "time": time_stats(df, turns),
        "words": word_stats([list(w) for w in own["words"]], top_n, min_collocation_freq),
        "language": language_stats(df, turn_languages, labels, top_n),
        "sentiment": sentiment_stats(df),
        "punctuation": {"owner": card["punctuation"], "others": punctuation_profile(df.loc[~df["is_owner"], "text"].tolist())},
    }
    return card, stats, latencies
