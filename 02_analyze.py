"""Stage 2: prepared messages -> the owner's chat life in numbers: stats/, plots, report.html and style_card.json.

accelerate launch 02_analyze.py --config configs/analyze.yaml
accelerate launch 02_analyze.py --input_dir data/01_prepared --output_dir data/02_analysis --timezone Asia/Ho_Chi_Minh
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import simme_common as sc

REQUIRED_COLUMNS = ("chat_id", "chat_type", "sender", "is_owner", "timestamp_ms", "text", "session_id")


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


def _load_messages(args: AnalyzeArguments):
    """01's messages/ without empty texts, and the number of rows read."""
    from datasets import load_from_disk

    src = Path(args.input_dir) / "messages"
    if not src.exists():
        raise sc.UserError(f"{src} not found: run 01_prepare.py first or pass --input_dir pointing to its output")
    ds = load_from_disk(str(src))
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise sc.UserError(f"{src} lacks column(s) {missing}: re-run 01_prepare.py with this version")
    n_loaded = len(ds)
    ds = ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True, desc="Dropping empty messages")
    return ds, n_loaded


def _add_features(ds, args: AnalyzeArguments, state):
    """The messages as a pandas table with the per-message text features and local time columns."""
    from datasets import Dataset

    # ~0.5 ms per message on one core (TweetTokenizer, VADER, TextBlob for the owner): large inputs use every core.
    num_proc = args.dataset_num_proc or (min(os.cpu_count() or 1, 8) if len(ds) >= 20_000 else None)
    types = _feature_types(ds.features)
    with state.local_main_process_first():
        if len(ds):
            ds = ds.map(_features, batched=True, batch_size=1000, num_proc=num_proc, features=types, desc="Text features")
        else:  # datasets cannot map an empty table onto new columns
            ds = Dataset.from_dict({k: [] for k in types}, features=types)
    return sc.add_local_time(ds.to_pandas(), args.timezone)


def _write_outputs(out: Path, stats: dict, card: dict, df, latencies: list[float], args: AnalyzeArguments) -> dict[str, str]:
    """stats/*.json, style_card.json, the plots, report.html and run_config.json; return the drawn plots."""
    (out / "stats").mkdir(parents=True, exist_ok=True)
    for name, section in stats.items():
        (out / "stats" / f"{name}.json").write_text(json.dumps(section, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    (out / "style_card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    imgs = sc.draw_plots(stats, card, df, latencies, out)
    (out / "report.html").write_text(_html(stats, card, imgs, args), encoding="utf-8")
    sc.save_run_config(out, args)
    return imgs


def main(args: AnalyzeArguments) -> None:
    from accelerate import PartialState
    from accelerate.utils import set_seed  # same as transformers.set_seed without importing transformers (~10 s)

    set_seed(args.seed)
    state = PartialState()
    started = time.time()
    # ----------------------------------------------------------------------------- load
    ds, n_loaded = _load_messages(args)
    # ----------------------------------------------------------------------------- features
    df = _add_features(ds, args, state)
    df, turns, gaps = sc.owner_turns(df, args.burst_seconds)
    # ----------------------------------------------------------------------------- statistics
    card, stats, latencies = sc.analyze_messages(df, turns, gaps, top_k=args.top_k, top_n=args.top_n,
                                                 min_collocation_freq=args.min_collocation_freq)
    stats["input"] = {"n_loaded": n_loaded, "n_text_messages": len(df), "timezone": args.timezone}
    # ----------------------------------------------------------------------------- save
    if state.is_main_process:
        out = Path(args.output_dir)
        with sc.atomic_output_dir(out) as tmp_out:  # a crash leaves the previous analysis whole
            imgs = _write_outputs(tmp_out, stats, card, df, latencies, args)
        print(sc.print_table([
            ("messages read / with text", f"{n_loaded:,} / {len(df):,}"), ("owner messages", card["n_messages"]),
            ("owner turns", card["n_turns"]), ("plots drawn", f"{sum(v is not None for v in imgs.values())}"),
            ("output", str(out)), ("elapsed s", round(time.time() - started, 1)),
        ], "02_analyze summary"))


if __name__ == "__main__":
    from trl import TrlParser

    (args,) = TrlParser((AnalyzeArguments,)).parse_args_and_config()
    sc.run_main(main, args)
