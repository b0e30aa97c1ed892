"""Tests of 02_analyze: text features, metrics on hand-checked inputs, the style card schema, the report.

Run: .venv/bin/python -m pytest -q tests/test_analyze.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import simme_common as sc

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("chat_id", "chat_type", "sender", "is_owner", "timestamp_ms", "text", "session_id", "source")


def messages_frame(rows: list[tuple]) -> pd.DataFrame:
    """(chat_id, session_id, sender, is_owner, seconds, text) rows -> a messages table per 01's contract."""
    return pd.DataFrame(
        [{"chat_id": c, "chat_type": "one_on_one", "sender": s, "is_owner": o, "timestamp_ms": int(t * 1000),
          "text": x, "session_id": sid, "source": "inbox"} for c, sid, s, o, t, x in rows],
        columns=list(COLUMNS),
    )


def write_messages(tmp_path: Path, rows: list[tuple]) -> Path:
    """Save rows as `<tmp>/prepared/messages` (a datasets.Dataset on disk) and return the prepared dir."""
    from datasets import Dataset, Features, Value

    features = Features({"chat_id": Value("string"), "chat_type": Value("string"), "sender": Value("string"),
                         "is_owner": Value("bool"), "timestamp_ms": Value("int64"), "text": Value("string"),
                         "session_id": Value("string"), "source": Value("string")})
    df = messages_frame(rows)
    Dataset.from_dict({c: df[c].tolist() for c in COLUMNS}, features=features).save_to_disk(str(tmp_path / "prepared" / "messages"))
    return tmp_path / "prepared"


def run_analyze(input_dir: Path, output_dir: Path, **kw) -> dict:
    """Run 02_analyze.main and return the written style card."""
    mod = sc.load_script(ROOT / "02_analyze.py")
    mod.main(mod.AnalyzeArguments(input_dir=str(input_dir), output_dir=str(output_dir), **kw))
    return strict_json(output_dir / "style_card.json")


def strict_json(path: Path):
    """Parse a JSON file, failing on NaN/Infinity (not JSON; readers in other languages reject them)."""
    def refuse(token: str):
        raise ValueError(f"{path} holds {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# ----------------------------------------------------------------------------- text features


def test_extract_emojis_counts_each_emoji_with_sequences_whole():
    assert sc.extract_emojis("hi 😂😂 👍🏽 ok 👨‍👩‍👧 ❤️") == ["😂", "😂", "👍🏽", "👨‍👩‍👧", "❤️"]
    assert sc.extract_emojis("no emoji here :)") == []
    assert sc.extract_emojis("") == []


def test_tokenize_words_lowercases_and_keeps_only_words():
    assert sc.tokenize_words("I DON'T know... 😂 :) http://x.io @bob #tag 0903 Đi ĂN!!") == ["i", "don't", "know", "đi", "ăn"]
    assert sc.tokenize_words("😂 123 !!!") == []


@pytest.mark.parametrize("text, expected", [
    ("where are we going tonight?", "en"),
    ("I don't know, maybe the usual place", "en"),
    ("anh ơi mai đi cà phê không", "vi"),
    ("hôm nay trời đẹp quá", "vi"),
    ("khong biet nua", "vi"),  # Vietnamese typed without diacritics
    ("Bạn ơi, send me the file please", "mixed"),
    ("đi ăn không bro, I am so hungry", "mixed"),
    ("😂😂😂", "other"),
    ("", "other"),
    ("12:30 !!!", "other"),
    ("haha", "other"),
])
def test_detect_language_labels_clear_messages(text, expected):
    assert sc.detect_language(text) == expected


def test_sentiment_scores_english_and_leaves_vietnamese_unscored():
    assert sc.sentiment_score("I love this, it is wonderful") > 0.5
    assert sc.sentiment_score("this is terrible, I hate it") < -0.5
    assert sc.sentiment_score("hôm nay trời đẹp quá") is None
    assert sc.textblob_polarity("hôm nay trời đẹp quá") is None
    assert sc.textblob_polarity("what a great day") > 0


def test_histogram_probs_bins_values_and_clips_outliers():
    # bins [0,2) [2,4) [4,8+): -1 -> first bin, 500 -> last bin
    assert sc.histogram_probs([0, 1, 2, 5, 500, -1], [0, 2, 4, 8]) == [pytest.approx(0.5), pytest.approx(1 / 6), pytest.approx(1 / 3)]
    assert sc.histogram_probs([], [0, 1, 2]) == [0.0, 0.0]


def test_distribution_similarity_is_one_minus_total_variation():
    assert sc.distribution_similarity([0.2, 0.8], [0.2, 0.8]) == pytest.approx(1.0)
    assert sc.distribution_similarity([1, 0], [0, 1]) == pytest.approx(0.0)
    assert sc.distribution_similarity([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert sc.distribution_similarity({"en": 3, "vi": 1}, {"en": 0.75, "mixed": 0.25}) == pytest.approx(0.75)
    assert sc.distribution_similarity([0, 0], [1, 0]) == 0.0
    with pytest.raises(ValueError):
        sc.distribution_similarity([1, 0], [1, 0, 0])


def test_punctuation_profile_counts_each_habit():
    texts = ["how are you?", "Great!", "well...", "ok.", "😂", "see you soon"]
    p = sc.punctuation_profile(texts)
    assert p["question_rate"] == pytest.approx(1 / 6)
    assert p["exclamation_rate"] == pytest.approx(1 / 6)
    assert p["ellipsis_rate"] == pytest.approx(1 / 6)
    assert p["trailing_period_rate"] == pytest.approx(1 / 6)  # "well..." is an ellipsis, not a period
    assert p["lowercase_share"] == pytest.approx(4 / 5)  # the emoji-only message has no case
    assert all(v is None for v in sc.punctuation_profile([]).values())


def test_message_features_counts_emoji_and_emoji_only():
    f = sc.message_features("😂😂")
    assert (f["n_emojis"], f["emoji_only"], f["n_words"], f["language"], f["vader"]) == (2, True, 0, "other", None)
    g = sc.message_features("lol 😂 that was great")
    assert (g["n_emojis"], g["emoji_only"], g["n_words"], g["language"]) == (1, False, 4, "en")


def test_lexical_diversity_is_windowed_ttr():
    assert sc.lexical_diversity(["a", "b", "a", "b"]) == pytest.approx(0.5)
    assert sc.lexical_diversity(["w"] * 1000, window=100) == pytest.approx(0.01)
    assert sc.lexical_diversity([]) is None


def test_code_switch_rate_counts_turns_using_both_languages():
    turns = [["en", "vi"], ["mixed"], ["en", "en"], ["vi", "other"], ["other"]]
    assert sc.code_switch_rate(turns) == pytest.approx(2 / 4)  # the emoji-only turn is not counted


# ----------------------------------------------------------------------------- turns, latency, gaps


def test_owner_turns_gives_known_latency_gaps_and_session_split():
    rows = [  # chat, session, sender, is_owner, seconds, text
        ("c1", "s1", "Bo", False, 0, "hi"), ("c1", "s1", "Me", True, 5, "hey"), ("c1", "s1", "Me", True, 7, "what's up"),
        ("c1", "s1", "Bo", False, 20, "nm"), ("c1", "s1", "Me", True, 80, "cool"),
        ("c1", "s2", "Me", True, 9000, "morning"),  # opens a new session: no reply latency
        ("c2", "s1", "Cy", False, 100, "yo"), ("c2", "s1", "Me", True, 101, "yo"),
    ]
    df, turns, gaps = sc.owner_turns(messages_frame(rows).sample(frac=1, random_state=0))
    assert turns["n_bubbles"].tolist() == [2, 1, 1, 1]
    assert turns["reply_latency_s"].tolist()[:2] == [5.0, 60.0]
    assert pd.isna(turns["reply_latency_s"].iloc[2]) and turns["reply_latency_s"].iloc[3] == 1.0
    assert gaps == [2.0]
    split, split_turns, split_gaps = sc.owner_turns(messages_frame(rows), burst_seconds=1.0)
    assert split_turns["n_bubbles"].tolist() == [1, 1, 1, 1, 1] and split_gaps == []
    assert pd.isna(split_turns["reply_latency_s"].iloc[1])  # the second bubble is not a reply to anyone


# ----------------------------------------------------------------------------- style card


def test_style_card_schema_and_values_on_known_turns():
    card = sc.build_style_card([["hey!", "wassup 😂"], ["cool."], ["anh ơi"], ["😂"]], "Owner", [5.0, 60.0], [2.0])
    assert set(card) == {"schema_version", "owner", "n_messages", "n_turns", "length", "burst", "emoji", "vocabulary",
                         "language", "punctuation", "reply_latency_s", "typing_gap_s", "sentiment"}
    assert (card["schema_version"], card["n_messages"], card["n_turns"]) == (1, 5, 4)
    for key in ("chars_per_message", "words_per_message", "chars_per_turn", "words_per_turn"):
        d = card["length"][key]
        assert set(d["quantiles"]) == {"p10", "p25", "p50", "p75", "p90"}
        assert sum(d["histogram"]["probs"]) == pytest.approx(1.0)
        assert len(d["histogram"]["probs"]) == len(d["histogram"]["edges"]) - 1
    assert card["length"]["chars_per_message"]["histogram"]["edges"] == sc.LENGTH_CHAR_EDGES
    assert card["burst"]["bubbles_per_turn"] == {"1": 0.75, "2": 0.25, "3": 0.0, "4": 0.0, "5": 0.0, "6+": 0.0}
    assert card["emoji"]["rate_per_message"] == pytest.approx(2 / 5)
    assert card["emoji"]["emoji_only_share"] == pytest.approx(1 / 5)
    assert card["emoji"]["top"] == {"😂": 1.0}
    assert card["language"]["mix"] == {"en": 0.6, "vi": 0.2, "mixed": 0.0, "other": 0.2}
    assert card["reply_latency_s"]["n"] == 2 and card["reply_latency_s"]["quantiles"]["p50"] == pytest.approx(32.5)
    assert card["typing_gap_s"]["histogram"]["probs"][2] == 1.0  # 2 s falls in [2, 3)
    assert card["sentiment"]["scored_share"] == pytest.approx(3 / 5)
    json.dumps(card)  # serialisable


def test_style_card_of_nothing_is_valid_with_nulls():
    card = sc.build_style_card([], "Owner")
    assert card["n_messages"] == 0 and card["length"]["chars_per_message"] is None
    assert card["emoji"]["top"] is None and card["language"]["mix"] is None and card["typing_gap_s"]["histogram"] is None


# ----------------------------------------------------------------------------- the stage end to end


def test_report_on_tiny_input_has_not_enough_data_and_no_crash(tmp_path):
    # one thread, owner only, one message, no emoji, one language
    card = run_analyze(write_messages(tmp_path, [("c1", "s1", "Me", True, 0, "hello there")]), tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "not enough data" in html and card["n_messages"] == 1
    assert card["reply_latency_s"]["quantiles"] is None and card["emoji"]["top"] is None
    assert (tmp_path / "out" / "run_config.json").exists() and (tmp_path / "out" / "stats" / "time.json").exists()


def test_report_without_owner_messages_is_valid(tmp_path):
    rows = [("c1", "s1", "Bo", False, 0, "anyone there?"), ("c1", "s1", "Bo", False, 60, "hello??")]
    card = run_analyze(write_messages(tmp_path, rows), tmp_path / "out")
    assert card["n_messages"] == 0 and card["owner"] == "owner"
    assert "not enough data" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_input_without_any_text_gives_valid_report(tmp_path):
    # attachment-only messages have empty text; (a 0-row dataset saved by datasets 5 cannot even be reloaded)
    rows = [("c1", "s1", "Me", True, 0, ""), ("c1", "s1", "Bo", False, 9, "  ")]
    card = run_analyze(write_messages(tmp_path, rows), tmp_path / "out")
    assert card["n_messages"] == 0 and (tmp_path / "out" / "report.html").exists()


def test_missing_input_is_a_user_error(tmp_path):
    with pytest.raises(sc.UserError, match="01_prepare"):
        run_analyze(tmp_path / "nowhere", tmp_path / "out")


def test_bad_timezone_is_a_user_error(tmp_path):
    with pytest.raises(sc.UserError, match="timezone"):
        run_analyze(write_messages(tmp_path, [("c1", "s1", "Me", True, 0, "hi")]), tmp_path / "out", timezone="Mars/Base")


def test_report_on_fixtures_after_01_prepare(tmp_path, fixtures_dir, tiny_model_dir):
    if not (ROOT / "01_prepare.py").exists():
        pytest.skip("01_prepare.py is not in this checkout yet")
    prep = sc.load_script(ROOT / "01_prepare.py")
    # max_length 384: the tiny tokenizer spends ~190 tokens on a big group's system prompt, whose surrogate names
    # (from the per-run test key) vary in length
    prep.main(prep.PrepareArguments(export_path=[str(fixtures_dir)], output_dir=str(tmp_path / "prepared"),
                                    model_name_or_path=str(tiny_model_dir), max_length=384, ner_model=""))
    out = tmp_path / "analysis"
    card = run_analyze(tmp_path / "prepared", out, timezone="Asia/Ho_Chi_Minh")
    assert card["schema_version"] == 1 and card["n_messages"] > 0 and card["n_turns"] > 0
    language = strict_json(out / "stats" / "language.json")
    assert language["others_mix"]["vi"] > 0  # the constructed fixtures hold Vietnamese threads
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 5 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(pngs)  # self-contained: every plot embedded
    assert "unscored" in html  # Vietnamese sentiment is marked, not silently neutral
    from datasets import load_from_disk

    chat_ids = set(load_from_disk(str(tmp_path / "prepared" / "messages"))["chat_id"])
    assert not any(c in html for c in chat_ids)  # chat ids may carry folder names: never shown
    for name in ("volume", "time", "words", "language", "sentiment", "punctuation"):
        strict_json(out / "stats" / f"{name}.json")
    scored = card["sentiment"]["scored_share"]
    assert 0 < scored <= 1 and (card["sentiment"]["vader_compound_mean"] is None) == (scored == 0)


def test_chat_labels_use_partner_names_unique_and_hide_chat_ids():
    df = messages_frame([
        ("thread_a", "s", "Bo", False, 0, "hi"), ("thread_a", "s", "Bo", False, 1, "hi"), ("thread_a", "s", "Me", True, 2, "yo"),
        ("thread_b", "s", "Bo", False, 5, "again"), ("thread_c", "s", "Me", True, 9, "note to self"),
    ])
    df.loc[df["chat_id"] == "thread_c", "chat_type"] = "group"
    labels = sc.chat_labels(df)
    assert labels == {"thread_a": "Bo", "thread_b": "Bo (2)", "thread_c": "group 1"}


def test_style_card_treats_nan_sentiment_from_pandas_as_unscored():
    feats = [sc.message_features(t, with_textblob=True) for t in ("what a great day", "hôm nay trời đẹp quá")]
    feats[1] = {**feats[1], "vader": float("nan"), "textblob": float("nan")}  # what to_pandas makes of None
    card = sc.build_style_card([["what a great day", "hôm nay trời đẹp quá"]], features=feats)
    assert card["sentiment"]["scored_share"] == 0.5
    assert card["sentiment"]["vader_compound_mean"] == pytest.approx(feats[0]["vader"])
