"""Per-message text features shared by 02 and 04: words, emoji, language (en / vi / mixed), sentiment, punctuation,
histograms and distribution similarity."""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from typing import Any


# Histogram bin edges shared by 02 (reference) and 04 (generated replies); bins are [e_i, e_i+1), values
# below the first edge fall in the first bin and values at or above the last edge in the last (open) bin.
LENGTH_CHAR_EDGES = [0, 3, 6, 10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320]

LENGTH_WORD_EDGES = [0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 30, 50]

TYPING_GAP_EDGES = [0, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300]  # seconds between bubbles of one owner turn

QUANTILES = (10, 25, 50, 75, 90)

MAX_BUBBLES_BIN = 6  # bubbles_per_turn keys "1".."5" and "6+"

# Chat words the word lists miss; language-neutral tokens carry no evidence either way.
_EN_SLANG = frozenset(
    "lol lmao lmfao omg bro gonna wanna gotta ur im idk tbh btw thx pls plz ya yea nah nope cuz ikr imo dm gf bf "
    "bday tmr tmrw tho wtf yay yup ugh".split()
)

_VI_SLANG = frozenset("ko hok hong dc đc j bik vs nx mn ng ntn ak ah ạ ừ ờ uk uh".split())

_NEUTRAL_RE = r"^(?:(?:ha)+h?|(?:hi)+|(?:he)+|(?:hu)+|(?:kk)+k*|o+k+|okay|oke+|okie|okela|hm+|u+m+|w+o+w+|x+d+)$"

# A link in chat text (the anonymizer replaces it, language detection ignores it).
URL_PATTERN = r"(?:https?://|www\.)[^\s<>\"']+"


def extract_emojis(text: str) -> list[str]:
    """Emoji in `text`, in order, one entry per emoji (ZWJ sequences and skin tones kept whole)."""
    if not text or text.isascii():  # no emoji is ASCII-only; skips the slow scan for most English messages
        return []
    import emoji

    return [m["emoji"] for m in emoji.emoji_list(text)]


@functools.lru_cache(maxsize=None)
def _tweet_tokenizer():
    """One NLTK TweetTokenizer (keeps emoji, contractions and URLs as single tokens).

    Case is kept (lowercasing all tokens first costs an emoticon regex per token) and phone-number matching
    is off (digits are no words): together ~2x faster; `tokenize_words` lowercases the words it keeps.
    """
    from nltk.tokenize import TweetTokenizer

    return TweetTokenizer(preserve_case=True, match_phone_numbers=False)


@functools.lru_cache(maxsize=None)
def _regex(pattern: str):
    """Compiled regex, once per process."""
    return re.compile(pattern)


def tokenize_words(text: str) -> list[str]:
    """Lowercased words of `text` (NLTK TweetTokenizer; no punctuation, emoji, numbers, URLs, @handles or #tags)."""
    word = _regex(r"^[^\W\d_]+(?:['’\-][^\W\d_]+)*$")
    return [t.lower() for t in _tweet_tokenizer().tokenize(text or "") if word.match(t)]


@functools.lru_cache(maxsize=None)
def vi_letters() -> frozenset[str]:
    """Precomposed non-ASCII letters of Vietnamese (vowels with tone/shape marks and đ), both cases."""
    marks = ["", "\u0300", "\u0301", "\u0303", "\u0309", "\u0323"]
    out = {"đ", "Đ"}
    for base in "aăâeêioôơuưy":
        for mark in marks:
            ch = unicodedata.normalize("NFC", base + mark)
            if not ch.isascii():
                out |= {ch, ch.upper()}
    return frozenset(out)


def strip_diacritics(word: str) -> str:
    """ASCII skeleton of a Vietnamese word ("không" -> "khong")."""
    word = word.replace("đ", "d").replace("Đ", "D")
    return "".join(c for c in unicodedata.normalize("NFD", word) if not unicodedata.combining(c))


@functools.lru_cache(maxsize=None)
def _word_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(English words, Vietnamese syllables written without diacritics), from installed packages only."""
    from importlib.resources import files

    from stop_words import get_stop_words

    en = set(get_stop_words("en")) | _EN_SLANG
    spelling = files("textblob") / "en" / "en-spelling.txt"
    for line in spelling.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(";"):
            en.add(line.split()[0].lower())
    vi = {strip_diacritics(s).lower() for w in get_stop_words("vi") for s in w.split()} | _VI_SLANG
    vi |= set("anh chi em minh ban toi cau ko khong duoc roi nha nhe nhi oi vay sao gi lam qua nay mai hom ngay di an uong".split())
    return frozenset(en), frozenset(vi)


@functools.lru_cache(maxsize=None)
def _lingua_detector():
    """Lingua detector restricted to English + Vietnamese (built once per process, ~20 ms)."""
    from lingua import Language, LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(Language.ENGLISH, Language.VIETNAMESE).build()


def detect_language(text: str) -> str:
    """Language of a chat message: "en", "vi", "mixed" (both in one message) or "other" (no words, emoji only).

    Cheap evidence first: a word with Vietnamese letters (ă, ơ, đ, tone marks) is Vietnamese; an ASCII word
    counts as English if only the English word list knows it and as Vietnamese if only the list of
    diacritic-free Vietnamese syllables does ("khong", "nha"); words both lists know ("an", "the", "em") and
    neutral chat tokens ("ok", "haha") count for neither. Both kinds of evidence -> "mixed" (an ASCII-only
    message needs two words of each, so a stray syllable does not make English "mixed"). Only messages
    without any evidence go to lingua (restricted to the two languages).
    """
    # A plain regex split is ~20x faster than TweetTokenizer and enough to find words (250k messages in seconds).
    neutral = _regex(_NEUTRAL_RE)
    text = _regex(URL_PATTERN).sub(" ", (text or "").lower())
    words = [w for w in _regex(r"[^\W\d_]+(?:['’][^\W\d_]+)*").findall(text) if not neutral.match(w)]
    if not words:
        return "other"
    letters = vi_letters()
    en_words, vi_sylls = _word_lists()
    n_en = n_vi = n_diacritic = 0
    for w in words:
        if not w.isascii() and any(c in letters for c in w):
            n_diacritic += 1
            continue
        base = w.replace("’", "'")
        in_en, in_vi = base in en_words, base in vi_sylls
        n_en += in_en and not in_vi
        n_vi += in_vi and not in_en
    n_vi += n_diacritic
    need = 1 if n_diacritic else 2
    if n_en >= need and n_vi >= need:
        return "mixed"
    if n_en or n_vi:
        return "en" if n_en > n_vi else "vi"
    found = _lingua_detector().detect_language_of(" ".join(words))
    if found is None:
        return "other"
    return "vi" if found.name == "VIETNAMESE" else "en"


@functools.lru_cache(maxsize=None)
def _vader():
    """VADER analyzer (lexicon loaded once per process)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_score(text: str, language: str | None = None) -> float | None:
    """VADER compound score in [-1, 1] for English or mixed messages; None when unscorable (Vietnamese, no words).

    VADER and TextBlob only know English: scoring Vietnamese would silently report it as neutral.
    Pass `language` when already known to skip detection.
    """
    language = language or detect_language(text)
    if language not in ("en", "mixed"):
        return None
    return float(_vader().polarity_scores(text)["compound"])


def textblob_polarity(text: str, language: str | None = None) -> float | None:
    """TextBlob polarity in [-1, 1] (the seed notebook's measure) for English or mixed messages, else None."""
    language = language or detect_language(text)
    if language not in ("en", "mixed"):
        return None
    # textblob.en.sentiment is what TextBlob(text).sentiment calls, without the per-call Blob and namedtuple (2x faster).
    from textblob.en import sentiment

    return float(sentiment(text)[0])


def histogram_probs(values: list[float], edges: list[float]) -> list[float]:
    """Share of `values` per bin [e_i, e_i+1) (first/last bins absorb values outside the edges); zeros when empty."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        i = bisect.bisect_right(edges, v) - 1
        counts[min(max(i, 0), len(counts) - 1)] += 1
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def distribution_similarity(p: list[float] | dict[str, float], q: list[float] | dict[str, float]) -> float:
    """1 - total variation distance between two distributions (aligned lists or dicts keyed by category), in [0, 1].

    Each side is renormalised; an empty or all-zero side gives 0.0 (nothing to compare).
    """
    if isinstance(p, dict) or isinstance(q, dict):
        p, q = dict(p or {}), dict(q or {})
        keys = sorted(set(p) | set(q))
        p, q = [p.get(k, 0.0) or 0.0 for k in keys], [q.get(k, 0.0) or 0.0 for k in keys]
    if len(p) != len(q):
        raise ValueError(f"distributions have different lengths: {len(p)} vs {len(q)}")
    sp, sq = sum(p), sum(q)
    if sp <= 0 or sq <= 0:
        return 0.0
    tv = 0.5 * sum(abs(a / sp - b / sq) for a, b in zip(p, q))
    return max(0.0, min(1.0, 1.0 - tv))


def text_style_flags(text: str) -> dict[str, bool | None]:
    """Punctuation and casing habits of one message; `lowercase` is None when it has no cased letters."""
    stripped = (text or "").rstrip()
    lower = stripped.lower()
    return {
        "question": "?" in stripped,
        "exclamation": "!" in stripped,
        "ellipsis": "..." in stripped or "…" in stripped,
        "trailing_period": stripped.endswith(".") and not stripped.endswith(".."),
        # string-level case tests run in C: has cased letters <=> lower != upper; no capital <=> equals its lower
        "lowercase": (stripped == lower) if lower != stripped.upper() else None,
    }


def punctuation_profile(texts: list[str]) -> dict[str, float | None]:
    """Question/exclamation/ellipsis/trailing-period rates per message and the share of all-lowercase messages.

    `lowercase_share` counts only messages with cased letters (emoji-only messages have no case); all None
    for no messages.
    """
    flags = [text_style_flags(t) for t in texts]
    cased = [f["lowercase"] for f in flags if f["lowercase"] is not None]
    rates = {f"{k}_rate": (sum(f[k] for f in flags) / len(flags) if flags else None)
             for k in ("question", "exclamation", "ellipsis", "trailing_period")}
    return {**rates, "lowercase_share": sum(cased) / len(cased) if cased else None}


def message_features(text: str, with_sentiment: bool = True, with_textblob: bool = False) -> dict[str, Any]:
    """Per-message text features used by the report and the style card (one pass, reused everywhere).

    Returns:
        dict with n_chars, words (list), n_words, emojis (list), n_emojis, emoji_only, language, vader and
        textblob (None when unscored or not requested).
    """
    words, emojis = tokenize_words(text), extract_emojis(text)
    language = detect_language(text)
    rest = (text or "")
    for e in emojis:
        rest = rest.replace(e, "")
    return {
        "n_chars": len(text or ""), "words": words, "n_words": len(words), "emojis": emojis, "n_emojis": len(emojis),
        "emoji_only": bool(emojis) and not rest.strip(" \t\n\ufe0f\u200d"),
        "language": language,
        "vader": sentiment_score(text, language) if with_sentiment else None,
        "textblob": textblob_polarity(text, language) if with_textblob else None,
    }


def quantiles(values: list[float], qs: tuple[int, ...] = QUANTILES) -> dict[str, float] | None:
    """{"p10": .., "p50": .., ...} by linear interpolation; None for no values."""
    import numpy as np

    if len(values) == 0:
        return None
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(np.asarray(values, dtype=float), qs))}


def describe_distribution(values: list[float], edges: list[float]) -> dict[str, Any] | None:
    """Style-card distribution D = {"mean", "quantiles", "histogram": {"edges", "probs"}}; None for no values."""
    if len(values) == 0:
        return None
    return {
        "mean": float(sum(values) / len(values)),
        "quantiles": quantiles(values),
        "histogram": {"edges": list(edges), "probs": histogram_probs(values, edges)},
    }


def lexical_diversity(tokens: list[str], window: int = 100) -> float | None:
    """Moving-average type-token ratio over `window`-token windows (plain TTR below that); None without tokens.

    Plain TTR falls as text grows, so a 200-reply evaluation could never match a 50k-message history; the
    windowed ratio is length-independent.
    """
    n = len(tokens)
    if n == 0:
        return None
    if n <= window:
        return len(set(tokens)) / n
    steps = min(n - window + 1, 5000)  # cap the work on huge inputs: evenly spaced windows are as good
    stride = max(1, (n - window + 1) // steps)
    total, used = 0.0, 0
    for start in range(0, n - window + 1, stride):
        total += len(set(tokens[start:start + window])) / window
        used += 1
    return total / used


def bubbles_distribution(bubble_counts: list[int]) -> dict[str, float] | None:
    """Share of turns with 1, 2, ..., 5 and 6+ bubbles; None for no turns."""
    if not bubble_counts:
        return None
    keys = [str(i) for i in range(1, MAX_BUBBLES_BIN)] + [f"{MAX_BUBBLES_BIN}+"]
    counts = dict.fromkeys(keys, 0)
    for n in bubble_counts:
        counts[keys[min(max(n, 1), MAX_BUBBLES_BIN) - 1]] += 1
    return {k: v / len(bubble_counts) for k, v in counts.items()}


def language_mix(languages: list[str]) -> dict[str, float] | None:
    """Share of "en", "vi", "mixed", "other" among message labels; None for no messages."""
    if not languages:
        return None
    return {k: sum(lang == k for lang in languages) / len(languages) for k in ("en", "vi", "mixed", "other")}


def code_switch_rate(turn_languages: list[list[str]]) -> float | None:
    """Share of owner turns (with any en/vi words) that use both languages: a "mixed" bubble or en and vi bubbles."""
    scored = [set(t) - {"other"} for t in turn_languages]
    scored = [s for s in scored if s]
    if not scored:
        return None
    return sum("mixed" in s or {"en", "vi"} <= s for s in scored) / len(scored)


def _mean(values: list[float | None]) -> float | None:
    """Mean of the non-None, non-NaN values; None when there are none."""
    vals = [v for v in values if v is not None and v == v]
    return float(sum(vals) / len(vals)) if vals else None


def stop_words() -> frozenset[str]:
    """English + Vietnamese stop words (the `stop-words` package; Vietnamese as single syllables)."""
    from stop_words import get_stop_words

    vi = [w for w in get_stop_words("vi") if " " not in w]
    return frozenset(w.lower() for w in [*get_stop_words("en"), *vi])
