"""Stage 2: prepared messages -> the owner's chat life in numbers: stats/, plots, report.html and style_card.json.

accelerate launch 02_analyze.py --config configs/analyze.yaml
accelerate launch 02_analyze.py --input_dir data/01_prepared --output_dir data/02_analysis --timezone Asia/Ho_Chi_Minh
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import simme_common as sc

REQUIRED_COLUMNS = ("chat_id", "chat_type", "sender", "is_owner", "timestamp_ms", "text", "session_id")
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
OWNER_COLOR, OTHERS_COLOR = "#1f77b4", "#ff7f0e"
PLOT_NAMES = ("volume_monthly", "top_chats", "heatmap_weekday_hour", "reply_latency", "length_per_message",
              "bubbles_per_turn", "top_words", "language_mix", "sentiment_over_time", "punctuation")


@dataclass
class AnalyzeArguments:
    input_dir: str = field(default=sc.PREPARED_DIR, metadata={"help": "01_prepare output (reads its messages/)."})
    output_dir: str = field(default=sc.ANALYSIS_DIR, metadata={"help": "Where report.html, *.png, style_card.json, stats/ go."})
    timezone: str = field(default="UTC", metadata={"help": "IANA time zone for hour/weekday/month features (exports are UTC)."})
    burst_seconds: float | None = field(default=None, metadata={"help": "Also split an owner turn at gaps longer than this (01's burst_seconds); null: a turn is every consecutive owner message of a session."})
    top_k: int = field(default=200, metadata={"help": "Vocabulary size kept in the style card."})
    top_n: int = field(default=20, metadata={"help": "Rows in the report's top words, n-grams, chats and emoji."})
    min_collocation_freq: int = field(default=3, metadata={"help": "Minimum bigram count for a collocation."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for the per-message feature map (default: all cores from 20k messages on)."})
    seed: int = field(default=42, metadata={"help": "Random seed (nothing here is random; kept for the contract)."})


def _features(batch: dict) -> dict:
    """Per-message text features of a batch; TextBlob (slow, English-only) only for the owner's messages."""
    rows = [sc.message_features(t, with_textblob=o) for t, o in zip(batch["text"], batch["is_owner"])]
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {k: [] for k in sc.message_features("")}


def _feature_types(base):
    """Output schema of `_features` (explicit: a shard with no emoji or no English would infer null columns)."""
    from datasets import Features, List, Value

    return Features({**base, "n_chars": Value("int32"), "words": List(Value("string")), "n_words": Value("int32"),
                     "emojis": List(Value("string")), "n_emojis": Value("int32"), "emoji_only": Value("bool"),
                     "language": Value("string"), "vader": Value("float64"), "textblob": Value("float64")})


def _label(text: str, width: int = 22) -> str:
    """Plot-safe label: no emoji (the plot font has no glyphs for them), at most `width` characters."""
    import emoji

    text = emoji.replace_emoji(str(text), "").strip() or "?"
    return text if len(text) <= width else text[: width - 1] + "…"


def _save(fig, out: Path, name: str) -> str:
    """Save a figure as PNG and return it base64-encoded for the self-contained report."""
    import matplotlib.pyplot as plt

    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return base64.b64encode(path.read_bytes()).decode()


def _plots(stats: dict, card: dict, df, latencies: list[float], out: Path) -> dict[str, str | None]:
    """Draw every plot that has data; the value is None ("not enough data") for the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "figure.constrained_layout.use": True})
    imgs: dict[str, str | None] = {}
    vol, tim = stats["volume"], stats["time"]

    months = vol["monthly"]["months"]
    if months:
        fig, ax = plt.subplots(figsize=(9, 4))
        x = np.arange(len(months))
        ax.bar(x - 0.2, vol["monthly"]["owner"], 0.4, label="owner", color=OWNER_COLOR)
        ax.bar(x + 0.2, vol["monthly"]["others"], 0.4, label="others", color=OTHERS_COLOR)
        step = max(1, len(months) // 12)
        ax.set_xticks(x[::step], months[::step], rotation=45, ha="right")
        ax.set(title="Messages per month", ylabel="messages")
        ax.legend()
        imgs["volume_monthly"] = _save(fig, out, "volume_monthly")

    top = vol["top_chats"]
    if top:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(top) + 1.5))
        y = np.arange(len(top))[::-1]  # positions, not names: two chats may shorten to the same label
        ax.barh(y, [t["owner"] for t in top], color=OWNER_COLOR, label="owner")
        ax.barh(y, [t["others"] for t in top], left=[t["owner"] for t in top], color=OTHERS_COLOR, label="others")
        ax.set_yticks(y, [_label(t["chat"]) for t in top])
        ax.set(title="Top chats by messages", xlabel="messages")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="lower right")
        imgs["top_chats"] = _save(fig, out, "top_chats")

    heat = np.array(tim["heatmap_weekday_hour"])
    if heat.sum() > 0:
        fig, ax = plt.subplots(figsize=(10, 3.6))
        im = ax.imshow(heat, aspect="auto", cmap="Blues")
        ax.set_yticks(range(7), WEEKDAYS)
        ax.set_xticks(range(0, 24, 2), [f"{h:02d}" for h in range(0, 24, 2)])
        ax.set(title="When the owner writes (messages by weekday and hour)", xlabel="hour of day")
        fig.colorbar(im, ax=ax, label="messages")
        imgs["heatmap_weekday_hour"] = _save(fig, out, "heatmap_weekday_hour")

    lat = np.asarray(latencies, dtype=float)
    if len(lat) >= 2:
        fig, ax = plt.subplots(figsize=(8, 4))
        bins = np.unique(np.round(np.logspace(0, np.log10(max(lat.max(), 10) + 1), 30)))  # whole seconds: no empty bins
        ax.hist(np.clip(lat, 1, None), bins=bins, color=OWNER_COLOR)
        ax.set_xscale("log")
        med = float(np.median(lat))
        ax.axvline(max(med, 1), color="k", ls="--", label=f"median {med:,.0f} s")
        ax.set(title="How fast the owner replies", xlabel="seconds from the other person's last message", ylabel="turns")
        ax.legend()
        imgs["reply_latency"] = _save(fig, out, "reply_latency")

    if card["length"]["chars_per_message"]:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, key, col, edges in ((axes[0], "characters", "n_chars", sc.LENGTH_CHAR_EDGES), (axes[1], "words", "n_words", sc.LENGTH_WORD_EDGES)):
            x = np.arange(len(edges) - 1)
            for shift, who, color in ((-0.2, True, OWNER_COLOR), (0.2, False, OTHERS_COLOR)):
                ax.bar(x + shift, sc.histogram_probs(df.loc[df["is_owner"] == who, col].tolist(), edges), 0.4,
                       color=color, label="owner" if who else "others")
            ax.set_xticks(x, [f"{e}+" if i == len(edges) - 2 else str(e) for i, e in enumerate(edges[:-1])], rotation=60)
            ax.set(title=f"{key.capitalize()} per message", xlabel=f"{key} (bin start)", ylabel="share of messages")
            ax.legend()
        imgs["length_per_message"] = _save(fig, out, "length_per_message")

    bubbles = card["burst"]["bubbles_per_turn"]
    if bubbles:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.bar(list(bubbles), list(bubbles.values()), color=OWNER_COLOR)
        ax.set(title="Bubbles per owner turn", xlabel="consecutive messages in one turn", ylabel="share of turns")
        imgs["bubbles_per_turn"] = _save(fig, out, "bubbles_per_turn")

    words = stats["words"]["top_words"]
    if words:
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(words) + 1.5))
        y = np.arange(len(words))[::-1]
        ax.barh(y, [c for _, c in words], color=OWNER_COLOR)
        ax.set_yticks(y, [_label(w) for w, _ in words])
        ax.set(title="Owner's top words (no stop words)", xlabel="count")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        imgs["top_words"] = _save(fig, out, "top_words")

    rows = [("owner (all)", stats["language"]["owner_mix"])] + [
        (f"to {c['chat']}", c["mix"]) for c in stats["language"]["owner_mix_per_chat"][:12]]
    rows = [(n, m) for n, m in rows if m]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.8))
        left, y = np.zeros(len(rows)), np.arange(len(rows))[::-1]
        for lang, color in zip(("en", "vi", "mixed", "other"), ("#4c72b0", "#dd8452", "#55a868", "#b0b0b0")):
            vals = np.array([m[lang] for _, m in rows])
            ax.barh(y, vals, left=left, color=color, label=lang)
            left += vals
        ax.set_yticks(y, [_label(n, 28) for n, _ in rows])
        ax.set(title="Language of the owner's messages", xlabel="share of messages", xlim=(0, 1))
        fig.legend(*ax.get_legend_handles_labels(), ncol=4, loc="outside lower center")
        imgs["language_mix"] = _save(fig, out, "language_mix")

    sm = stats["sentiment"]["monthly"]
    if sum(v is not None for v in sm["owner"] + sm["others"]) >= 2:
        fig, ax = plt.subplots(figsize=(9, 3.8))
        x = np.arange(len(sm["months"]))
        for who, color in (("owner", OWNER_COLOR), ("others", OTHERS_COLOR)):
            ax.plot(x, [np.nan if v is None else v for v in sm[who]], marker="o", color=color, label=who)
        step = max(1, len(x) // 12)
        ax.set_xticks(x[::step], sm["months"][::step], rotation=45, ha="right")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(title="Sentiment over time (VADER, English and mixed messages only)", ylabel="mean compound", ylim=(-1, 1))
        ax.legend()
        imgs["sentiment_over_time"] = _save(fig, out, "sentiment_over_time")

    punct = stats["punctuation"]
    if punct["owner"]["question_rate"] is not None:
        keys = ["question_rate", "exclamation_rate", "ellipsis_rate", "trailing_period_rate", "lowercase_share"]
        fig, ax = plt.subplots(figsize=(8, 3.8))
        x = np.arange(len(keys))
        for shift, who, color in ((-0.2, "owner", OWNER_COLOR), (0.2, "others", OTHERS_COLOR)):
            ax.bar(x + shift, [punct[who][k] or 0 for k in keys], 0.4, color=color, label=who)
        ax.set_xticks(x, [k.replace("_rate", "").replace("_", " ") for k in keys])
        ax.set(title="Punctuation and casing habits", ylabel="share of messages", ylim=(0, 1))
        ax.legend()
        imgs["punctuation"] = _save(fig, out, "punctuation")
    for name in PLOT_NAMES:  # a re-run on less data must not leave an earlier run's plot behind
        if name not in imgs:
            (out / f"{name}.png").unlink(missing_ok=True)
    return imgs


def _html(stats: dict, card: dict, imgs: dict[str, str | None], args: AnalyzeArguments) -> str:
    """The self-contained report page: summary numbers, plots (base64 PNG) and tables."""
    e = html.escape
    fmt = lambda v, p=".2f": "not enough data" if v is None else format(v, p)  # noqa: E731

    def img(name: str, caption: str) -> str:
        b64 = imgs.get(name)
        body = f'<img alt="{e(caption)}" src="data:image/png;base64,{b64}">' if b64 else f'<p class="na">{e(caption)}: not enough data</p>'
        return f"<figure>{body}</figure>"

    def table(rows: list, head: tuple[str, ...]) -> str:
        if not rows:
            return '<p class="na">not enough data</p>'
        cells = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr>{cells}</table>"

    v, t, w, lang, s = stats["volume"], stats["time"], stats["words"], stats["language"], stats["sentiment"]
    lq = t["reply_latency_s"]["quantiles"]
    emo = card["emoji"]
    summary = [
        ("messages (owner / all)", f"{v['n_owner']:,} / {v['n_messages']:,}"), ("chats", f"{v['n_chats']:,}"),
        ("one-on-one / group share", f"{v['chat_type_share']['one_on_one']:.0%} / {v['chat_type_share']['group']:.0%}"),
        ("owner turns", f"{card['n_turns']:,}"), ("bubbles per turn (mean)", fmt(card["burst"]["mean"])),
        ("reply latency median (s)", fmt(lq["p50"] if lq else None, ",.0f")),
        ("sessions started by the owner", fmt(t["session_starters"]["owner_share"], ".0%")),
        ("lexical diversity (MATTR-100)", fmt(card["vocabulary"]["lexical_diversity"])),
        ("emoji per message / emoji-only share", f"{fmt(emo['rate_per_message'])} / {fmt(emo['emoji_only_share'], '.1%')}"),
        ("code-switch rate (turns with en + vi)", fmt(lang["code_switch_rate"], ".1%")),
    ]
    sent_note = (f"VADER and TextBlob only understand English, so only English and mixed messages are scored "
                 f"({fmt(s['scored_share']['owner'], '.0%')} of the owner's messages). {s['unscored_vietnamese_owner']:,} Vietnamese "
                 f"messages of the owner are <b>unscored</b>, not counted as neutral.")
    parts = [
        f"<h1>SimMe chat analysis</h1><p>Owner: <b>{e(card['owner'])}</b> · time zone {e(args.timezone)} · generated "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. All names are the surrogates written by 01_prepare.</p>",
        "<h2>Summary</h2>" + table(summary, ("measure", "value")),
        "<h2>Volume</h2>" + img("volume_monthly", "Messages per month") + img("top_chats", "Top chats"),
        "<h2>Time</h2>" + img("heatmap_weekday_hour", "Weekday x hour heatmap") + img("reply_latency", "Reply latency")
        + table([[k, f"{x:,.0f}"] for k, x in (lq or {}).items()], ("reply latency quantile", "seconds")),
        "<h2>Length and bursts</h2>" + img("length_per_message", "Length per message") + img("bubbles_per_turn", "Bubbles per turn"),
        "<h2>Words</h2>" + img("top_words", "Top words") + "<div class='cols'>"
        + table(w["top_bigrams"], ("bigram", "count")) + table(w["top_trigrams"], ("trigram", "count"))
        + table([[c] for c in w["collocations"]], ("collocation (likelihood ratio)",)) + "</div>"
        + img("punctuation", "Punctuation and casing"),
        "<h2>Emoji</h2>" + table([[k, f"{p:.1%}"] for k, p in (emo["top"] or {}).items()][: args.top_n], ("emoji", "share of owner's emoji")),
        "<h2>Language</h2>" + img("language_mix", "Language mix") + f"<p>Code-switch rate: {fmt(lang['code_switch_rate'], '.1%')} of the owner's turns mix English and Vietnamese.</p>",
        "<h2>Sentiment</h2>" + f"<p>{sent_note}</p>" + table(
            [["owner VADER mean", fmt(s["owner_vader_mean"])], ["owner TextBlob mean", fmt(s["owner_textblob_mean"])],
             ["others VADER mean", fmt(s["others_vader_mean"])]], ("measure", "value")) + img("sentiment_over_time", "Sentiment over time"),
    ]
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%}table{border-collapse:collapse;margin:.5em 1em .5em 0;vertical-align:top}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.cols{display:flex;flex-wrap:wrap}.na{color:#888}")
    return f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>SimMe analysis</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"


def main(args: AnalyzeArguments) -> None:
    from accelerate import PartialState
    from accelerate.utils import set_seed  # same as transformers.set_seed without importing transformers (~10 s)
    from datasets import Dataset, load_from_disk

    set_seed(args.seed)
    state = PartialState()
    started = time.time()
    # ----------------------------------------------------------------------------- load
    src = Path(args.input_dir) / "messages"
    if not src.exists():
        raise sc.UserError(f"{src} not found: run 01_prepare.py first or pass --input_dir pointing to its output")
    ds = load_from_disk(str(src))
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise sc.UserError(f"{src} lacks column(s) {missing}: re-run 01_prepare.py with this version")
    n_loaded = len(ds)
    ds = ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True, desc="Dropping empty messages")
    # ----------------------------------------------------------------------------- features
    # ~0.5 ms per message on one core (TweetTokenizer, VADER, TextBlob for the owner): large inputs use every core.
    num_proc = args.dataset_num_proc or (min(os.cpu_count() or 1, 8) if len(ds) >= 20_000 else None)
    types = _feature_types(ds.features)
    with state.local_main_process_first():
        if len(ds):
            ds = ds.map(_features, batched=True, batch_size=1000, num_proc=num_proc, features=types, desc="Text features")
        else:  # datasets cannot map an empty table onto new columns
            ds = Dataset.from_dict({k: [] for k in types}, features=types)
    df = sc.add_local_time(ds.to_pandas(), args.timezone)
    df, turns, gaps = sc.owner_turns(df, args.burst_seconds)
    owner = df.loc[df["is_owner"], "sender"].mode()
    owner = str(owner.iloc[0]) if len(owner) else "owner"
    # ----------------------------------------------------------------------------- statistics
    own = df[df["is_owner"]]
    turn_rows = own.groupby("turn_id", sort=True).indices
    texts = own["text"].to_numpy()  # numpy fancy indexing: pandas .iloc per turn costs ~1 ms x 70k turns
    turn_texts = [texts[idx].tolist() for idx in turn_rows.values()]
    feature_cols = ["n_chars", "words", "n_words", "emojis", "n_emojis", "emoji_only", "language", "vader", "textblob"]
    features = own[feature_cols].to_dict("records")
    feats_in_turn_order = [features[i] for idx in turn_rows.values() for i in idx]
    latencies = turns["reply_latency_s"].dropna().tolist()
    card = sc.build_style_card(turn_texts, owner, latencies, gaps, feats_in_turn_order, top_k=args.top_k)
    labels = sc.chat_labels(df)
    stats = {
        "volume": sc.volume_stats(df, labels, args.top_n),
        "time": sc.time_stats(df, turns),
        "words": sc.word_stats([list(w) for w in own["words"]], args.top_n, args.min_collocation_freq),
        "language": sc.language_stats(df, [[features[i]["language"] for i in idx] for idx in turn_rows.values()], labels, args.top_n),
        "sentiment": sc.sentiment_stats(df),
        "punctuation": {"owner": card["punctuation"], "others": sc.punctuation_profile(df.loc[~df["is_owner"], "text"].tolist())},
        "input": {"n_loaded": n_loaded, "n_text_messages": len(df), "timezone": args.timezone},
    }
    # ----------------------------------------------------------------------------- save
    if state.is_main_process:
        out = Path(args.output_dir)
        (out / "stats").mkdir(parents=True, exist_ok=True)
        for name, section in stats.items():
            (out / "stats" / f"{name}.json").write_text(json.dumps(section, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
        (out / "style_card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
        imgs = _plots(stats, card, df, latencies, out)
        (out / "report.html").write_text(_html(stats, card, imgs, args), encoding="utf-8")
        sc.save_run_config(out, args)
        print(sc.print_table([
            ("messages read / with text", f"{n_loaded:,} / {len(df):,}"), ("owner messages", card["n_messages"]),
            ("owner turns", card["n_turns"]), ("plots drawn", f"{sum(v is not None for v in imgs.values())}"),
            ("output", str(out)), ("elapsed s", round(time.time() - started, 1)),
        ], "02_analyze summary"))


if __name__ == "__main__":
    from trl import TrlParser

    (args,) = TrlParser((AnalyzeArguments,)).parse_args_and_config()
    sc.run_main(main, args)
