"""04's metrics are not fooled: echoing the context, copying a training reply, emitting the owner's most frequent
words, an empty reply and invented numbers each score no better than the owner's real replies on every reply
metric, and strictly worse on the metrics meant to catch them.

Run: .venv/bin/python -m pytest -q tests/test_metrics_gaming.py
"""

from collections import Counter

import pytest

from simme_common import metrics as sm
from simme_common import metrics_style
from simme_common.metric_defs import METRIC_BY_KEY
from simme_common.text_features import stop_words, tokenize_words

# The owner: short, lowercase, "haha"/"lol", some emoji and Vietnamese; friends: longer, capitalized, punctuated.
OWNER_TRAIN = [
    "haha ok 😂", "lol no way", "omw rn", "nah im good", "ừ để mai nha", "sure thing", "wait what 😂", "ok see u there",
    "haha same", "lol true", "mình đang bận tí", "idk maybe later", "yeah sounds fun", "ugh mondays", "ok ok 😂",
    "haha nice one", "lol i forgot", "brb", "đi ăn không", "cool cool", "not rn sorry", "haha yes pls", "lmao 😂",
    "ok bye", "ừ ok", "hmm let me check", "call me at 0912 345 678", "on my way haha", "lol what", "thanks!!",
    "i'll be late lol", "cà phê không", "so tired haha", "yep", "no worries", "haha omg 😂", "later ok", "bet",
]
FRIEND_TRAIN = [
    "Are you coming to the meeting tomorrow at 10?", "I sent you the document, please check it.",
    "Did you see the news about the new office?", "Anh ơi, mai anh có rảnh không ạ?", "What time should we leave?",
    "My flight lands at 6:45, can you pick me up?", "The restaurant is on 12 Baker Street.", "Happy birthday!! Hope you have a great day.",
    "Can you send me the photos from Saturday?", "We need 3 more people for the team.", "Chị gửi em file rồi nhé.",
    "Let me know when you are free this week.",
]
TEST = [  # (the friend's last message, the owner's real reply)
    ("Are you joining us for dinner tonight?", "haha ok what time"), ("Did you finish the report for Monday?", "lol not yet 😂"),
    ("Mai em có đi học không?", "ừ có nha"), ("The movie starts at 8, don't be late!", "omw soon"),
    ("Can you bring the speaker to the party?", "sure thing"), ("I think I lost my keys again.", "lol again?? 😂"),
    ("Want to play tennis this weekend?", "yeah down"), ("How was your trip to Da Nang?", "so fun haha"),
    ("Please call me when you get this message.", "ok in 5"), ("Chiều nay đi cà phê không em?", "đi luôn"),
    ("Happy new year!! Wishing you all the best.", "haha same to u 😂"), ("Did you feed the cat this morning?", "yep"),
    ("The train is delayed by 20 minutes.", "ugh ok"), ("Are you awake?", "ya whats up"),
    ("I got the job!!!", "omg congrats 😂"), ("Can you help me move on Sunday?", "hmm maybe"),
    ("Where did you park the car?", "near the gym lol"), ("Lunch at noon?", "ok see u"),
    ("Thanks for yesterday, it was fun.", "haha anytime"), ("Em ăn cơm chưa?", "chưa nữa"),
    ("Do you still have my charger?", "oh yea sorry"), ("Meeting moved to 3pm.", "ok noted"),
    ("Let's go hiking next month.", "lol sure"), ("Your package arrived at the office.", "nice thx"),
]


@pytest.fixture(scope="module")
def scored():
    """The reference once, then the real replies and each gaming case scored as a model column."""
    contexts = [[m] for m, _ in TEST]
    real = [r for _, r in TEST]
    ref = sm.build_reference(real, contexts, OWNER_TRAIN, FRIEND_TRAIN, sm.load_text_encoder(), metrics_style.load_bertscorer())
    stops = stop_words()
    top = " ".join(w for w, _ in Counter(w for t in OWNER_TRAIN for w in tokenize_words(t) if w not in stops).most_common(4))
    # One- and two-token turns ("yep", "bet") are style, not something a model can be said to have memorized.
    distinct = sorted((t for t in OWNER_TRAIN if len(sm.memo_tokens(t)) >= 3), key=lambda t: "0912" not in t)
    cases = {
        "real": real,
        "echo": [m for m, _ in TEST],
        "copy": [distinct[i % len(distinct)] for i in range(len(TEST))],
        "top_words": [top] * len(TEST),
        "empty": [""] * len(TEST),
        "numbers": [f"call me at 0987 654 3{i:02d}, pin 55{i:03d}" for i in range(len(TEST))],
    }
    return {name: sm.score_replies(replies, ref, "finetuned", n_boot=20)[0] for name, replies in cases.items()}


REPLY_METRICS = ("owner_likeness", "discriminator_auc", "mauve", "length_similarity", "vocab_overlap", "emoji_match",
                 "sentiment_alignment", "language_mix_accuracy", "bleu", "rouge_l", "bertscore", "context_relevance",
                 "repetition_rate", "memorization_rate", "pii_per_reply", "memorized_pii_rate")
# The metric each gaming case is aimed at must see through it (strictly worse than the real replies).
CAUGHT_BY = {
    "echo": ("context_relevance", "owner_likeness", "discriminator_auc", "rouge_l", "bertscore", "length_similarity"),
    "copy": ("memorization_rate", "memorized_pii_rate", "owner_likeness", "length_similarity", "vocab_overlap", "context_relevance", "mauve"),
    "top_words": ("vocab_overlap", "length_similarity", "mauve", "discriminator_auc", "context_relevance"),
    "empty": ("owner_likeness", "length_similarity", "vocab_overlap", "context_relevance", "repetition_rate", "bertscore"),
    "numbers": ("pii_per_reply", "owner_likeness", "vocab_overlap", "length_similarity", "discriminator_auc"),
}


def _worse(key: str, gamed: float, real: float) -> bool:
    """True when `gamed` is strictly worse than `real` in the metric's direction."""
    return gamed < real if METRIC_BY_KEY[key].direction == "higher" else gamed > real


@pytest.mark.parametrize("case", sorted(CAUGHT_BY))
def test_gaming_case_scores_no_better_than_real_replies_on_any_metric(scored, case):
    real, gamed = scored["real"], scored[case]
    better = [k for k in REPLY_METRICS if real[k] is not None and gamed[k] is not None and _worse(k, real[k], gamed[k])]
    assert not better, f"{case} beats the real replies on {better}: " + str({k: (gamed[k], real[k]) for k in better})
    missed = [k for k in CAUGHT_BY[case] if not _worse(k, gamed[k], real[k])]
    assert not missed, f"{case} is not caught by {missed}: " + str({k: (gamed[k], real[k]) for k in missed})


def test_every_reply_metric_catches_at_least_one_gaming_case(scored):
    for key in REPLY_METRICS:
        assert any(scored[c][key] is not None and _worse(key, scored[c][key], scored["real"][key]) for c in CAUGHT_BY), key


def test_echo_penalty_and_memorized_pii_are_specific(scored):
    assert scored["echo"]["context_relevance"] == 0.0  # a copy of the context is not relevance
    assert scored["numbers"]["memorized_pii_rate"] == 0.0  # invented numbers are PII-shaped, not memorized
    assert scored["numbers"]["pii_kinds"].get("phone", 0) >= len(TEST)


def test_mauve_is_the_mean_over_distinct_seeded_half_splits(scored):
    splits = scored["real"]["mauve_per_split"]
    assert len(splits) == sm.MAUVE_SPLITS and len(set(splits)) > 1  # the splits differ, so averaging them helps
    assert scored["real"]["mauve"] == pytest.approx(sum(splits) / len(splits))
