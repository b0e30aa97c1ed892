"""Stage 02's plots: one function per figure, each saved as PNG and returned base64-encoded for report.html."""

from __future__ import annotations

import base64
from pathlib import Path

from .text_features import LENGTH_CHAR_EDGES, LENGTH_WORD_EDGES, histogram_probs

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
OWNER_COLOR, OTHERS_COLOR = "#1f77b4", "#ff7f0e"
LANGUAGE_COLORS = (("en", "#4c72b0"), ("vi", "#dd8452"), ("mixed", "#55a868"), ("other", "#b0b0b0"))
PUNCTUATION_KEYS = ("question_rate", "exclamation_rate", "ellipsis_rate", "trailing_period_rate", "lowercase_share")


def plot_label(text: str, width: int = 22) -> str:
    """Plot-safe label: no emoji (the plot font has no glyphs for them), at most `width` characters."""
    import emoji

    text = emoji.replace_emoji(str(text), "").strip() or "?"
    return text if len(text) <= width else text[: width - 1] + "…"


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, with the report's font sizes and layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "figure.constrained_layout.use": True})
    return plt


def _save(fig, out: Path, name: str) -> str:
    """Save a figure as `out/name.png` and return it base64-encoded for the self-contained report."""
    import matplotlib.pyplot as plt

    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return base64.b64encode(path.read_bytes()).decode()


def _month_ticks(ax, x, months: list[str]) -> None:
    """At most ~12 month labels under x, slanted."""
    step = max(1, len(x) // 12)
    ax.set_xticks(x[::step], months[::step], rotation=45, ha="right")


def plot_volume_monthly(stats: dict, out: Path) -> str | None:
    """Owner's and others' messages per month."""
    monthly = stats["volume"]["monthly"]
    months = monthly["months"]
    if not months:
        return None
    import numpy as np

    fig, ax = _pyplot().subplots(figsize=(9, 4))
    x = np.arange(len(months))
    ax.bar(x - 0.2, monthly["owner"], 0.4, label="owner", color=OWNER_COLOR)
    ax.bar(x + 0.2, monthly["others"], 0.4, label="others", color=OTHERS_COLOR)
    _month_ticks(ax, x, months)
    ax.set(title="Messages per month", ylabel="messages")
    ax.legend()
    return _save(fig, out, "volume_monthly")


def plot_top_chats(stats: dict, out: Path) -> str | None:
    """Stacked owner/others messages of the top chats."""
    top = stats["volume"]["top_chats"]
    if not top:
        return None
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, ax = _pyplot().subplots(figsize=(8, 0.35 * len(top) + 1.5))
    y = np.arange(len(top))[::-1]  # positions, not names: two chats may shorten to the same label
    ax.barh(y, [t["owner"] for t in top], color=OWNER_COLOR, label="owner")
    ax.barh(y, [t["others"] for t in top], left=[t["owner"] for t in top], color=OTHERS_COLOR, label="others")
    ax.set_yticks(y, [plot_label(t["chat"]) for t in top])
    ax.set(title="Top chats by messages", xlabel="messages")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right")
    return _save(fig, out, "top_chats")


def plot_heatmap_weekday_hour(stats: dict, out: Path) -> str | None:
    """The owner's messages by weekday and hour."""
    import numpy as np

    heat = np.array(stats["time"]["heatmap_weekday_hour"])
    if heat.sum() <= 0:
        return None
    fig, ax = _pyplot().subplots(figsize=(10, 3.6))
    im = ax.imshow(heat, aspect="auto", cmap="Blues")
    ax.set_yticks(range(7), WEEKDAYS)
    ax.set_xticks(range(0, 24, 2), [f"{h:02d}" for h in range(0, 24, 2)])
    ax.set(title="When the owner writes (messages by weekday and hour)", xlabel="hour of day")
    fig.colorbar(im, ax=ax, label="messages")
    return _save(fig, out, "heatmap_weekday_hour")


def plot_reply_latency(latencies: list[float], out: Path) -> str | None:
    """Histogram (log seconds) of the owner's reply latencies, with the median."""
    import numpy as np

    lat = np.asarray(latencies, dtype=float)
    if len(lat) < 2:
        return None
    fig, ax = _pyplot().subplots(figsize=(8, 4))
    bins = np.unique(np.round(np.logspace(0, np.log10(max(lat.max(), 10) + 1), 30)))  # whole seconds: no empty bins
    ax.hist(np.clip(lat, 1, None), bins=bins, color=OWNER_COLOR)
    ax.set_xscale("log")
    med = float(np.median(lat))
    ax.axvline(max(med, 1), color="k", ls="--", label=f"median {med:,.0f} s")
    ax.set(title="How fast the owner replies", xlabel="seconds from the other person's last message", ylabel="turns")
    ax.legend()
    return _save(fig, out, "reply_latency")


def plot_length_per_message(card: dict, df, out: Path) -> str | None:
    """Characters and words per message, owner vs others (share of messages per length bin)."""
    if not card["length"]["chars_per_message"]:
        return None
    import numpy as np

    fig, axes = _pyplot().subplots(1, 2, figsize=(10, 3.8))
    for ax, key, col, edges in ((axes[0], "characters", "n_chars", LENGTH_CHAR_EDGES), (axes[1], "words", "n_words", LENGTH_WORD_EDGES)):
        x = np.arange(len(edges) - 1)
        for shift, who, color in ((-0.2, True, OWNER_COLOR), (0.2, False, OTHERS_COLOR)):
            ax.bar(x + shift, histogram_probs(df.loc[df["is_owner"] == who, col].tolist(), edges), 0.4,
                   color=color, label="owner" if who else "others")
        ax.set_xticks(x, [f"{e}+" if i == len(edges) - 2 else str(e) for i, e in enumerate(edges[:-1])], rotation=60)
        ax.set(title=f"{key.capitalize()} per message", xlabel=f"{key} (bin start)", ylabel="share of messages")
        ax.legend()
    return _save(fig, out, "length_per_message")


def plot_bubbles_per_turn(card: dict, out: Path) -> str | None:
    """Share of owner turns by number of bubbles."""
    bubbles = card["burst"]["bubbles_per_turn"]
    if not bubbles:
        return None
    fig, ax = _pyplot().subplots(figsize=(6, 3.6))
    ax.bar(list(bubbles), list(bubbles.values()), color=OWNER_COLOR)
    ax.set(title="Bubbles per owner turn", xlabel="consecutive messages in one turn", ylabel="share of turns")
    return _save(fig, out, "bubbles_per_turn")


def plot_top_words(stats: dict, out: Path) -> str | None:
    """Counts of the owner's top words."""
    words = stats["words"]["top_words"]
    if not words:
        return None
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, ax = _pyplot().subplots(figsize=(7, 0.3 * len(words) + 1.5))
    y = np.arange(len(words))[::-1]
    ax.barh(y, [c for _, c in words], color=OWNER_COLOR)
    ax.set_yticks(y, [plot_label(w) for w, _ in words])
    ax.set(title="Owner's top words (no stop words)", xlabel="count")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, out, "top_words")


def plot_language_mix(stats: dict, out: Path) -> str | None:
    """Language shares of the owner's messages, overall and in up to 12 chats."""
    language = stats["language"]
    rows = [("owner (all)", language["owner_mix"])] + [(f"to {c['chat']}", c["mix"]) for c in language["owner_mix_per_chat"][:12]]
    rows = [(n, m) for n, m in rows if m]
    if not rows:
        return None
    import numpy as np

    fig, ax = _pyplot().subplots(figsize=(8, 0.35 * len(rows) + 1.8))
    left, y = np.zeros(len(rows)), np.arange(len(rows))[::-1]
    for lang, color in LANGUAGE_COLORS:
        vals = np.array([m[lang] for _, m in rows])
        ax.barh(y, vals, left=left, color=color, label=lang)
        left += vals
    ax.set_yticks(y, [plot_label(n, 28) for n, _ in rows])
    ax.set(title="Language of the owner's messages", xlabel="share of messages", xlim=(0, 1))
    fig.legend(*ax.get_legend_handles_labels(), ncol=4, loc="outside lower center")
    return _save(fig, out, "language_mix")


def plot_sentiment_over_time(stats: dict, out: Path) -> str | None:
    """Monthly mean VADER compound of owner and others (needs two scored months)."""
    sm = stats["sentiment"]["monthly"]
    if sum(v is not None for v in sm["owner"] + sm["others"]) < 2:
        return None
    import numpy as np

    fig, ax = _pyplot().subplots(figsize=(9, 3.8))
    x = np.arange(len(sm["months"]))
    for who, color in (("owner", OWNER_COLOR), ("others", OTHERS_COLOR)):
        ax.plot(x, [np.nan if v is None else v for v in sm[who]], marker="o", color=color, label=who)
    _month_ticks(ax, x, sm["months"])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(title="Sentiment over time (VADER, English and mixed messages only)", ylabel="mean compound", ylim=(-1, 1))
    ax.legend()
    return _save(fig, out, "sentiment_over_time")


def plot_punctuation(stats: dict, out: Path) -> str | None:
    """Punctuation and casing habits, owner vs others."""
    punct = stats["punctuation"]
    if punct["owner"]["question_rate"] is None:
        return None
    import numpy as np

    fig, ax = _pyplot().subplots(figsize=(8, 3.8))
    x = np.arange(len(PUNCTUATION_KEYS))
    for shift, who, color in ((-0.2, "owner", OWNER_COLOR), (0.2, "others", OTHERS_COLOR)):
        ax.bar(x + shift, [punct[who][k] or 0 for k in PUNCTUATION_KEYS], 0.4, color=color, label=who)
    ax.set_xticks(x, [k.replace("_rate", "").replace("_", " ") for k in PUNCTUATION_KEYS])
    ax.set(title="Punctuation and casing habits", ylabel="share of messages", ylim=(0, 1))
    ax.legend()
    return _save(fig, out, "punctuation")


def draw_plots(stats: dict, card: dict, df, latencies: list[float], out: Path) -> dict[str, str]:
    """Draw every report plot that has data into `out`; return {name: base64 PNG} of those drawn.

    Args:
        stats: 02's stats sections; card: the owner's style card.
        df: the messages table with n_chars/n_words/is_owner columns; latencies: reply latencies (s).
        out: directory of the PNG files; a plot without data has its file from an earlier run removed.
    """
    drawn = {
        "volume_monthly": plot_volume_monthly(stats, out),
        "top_chats": plot_top_chats(stats, out),
        "heatmap_weekday_hour": plot_heatmap_weekday_hour(stats, out),
        "reply_latency": plot_reply_latency(latencies, out),
        "length_per_message": plot_length_per_message(card, df, out),
        "bubbles_per_turn": plot_bubbles_per_turn(card, out),
        "top_words": plot_top_words(stats, out),
        "language_mix": plot_language_mix(stats, out),
        "sentiment_over_time": plot_sentiment_over_time(stats, out),
        "punctuation": plot_punctuation(stats, out),
    }
    for name, b64 in drawn.items():
        if b64 is None:  # a re-run on less data must not leave an earlier run's plot behind
            (out / f"{name}.png").unlink(missing_ok=True)
    return {name: b64 for name, b64 in drawn.items() if b64 is not None}
