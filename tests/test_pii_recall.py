"""Names nobody listed: spaCy NER (en_core_web_sm) behind a gate, plus the lexicon rules for what NER misses in
chat; everyday words that are also names survive; a missing model falls back with one warning; new kinds keep a
same-kind surrogate and are counted by kind.

Run (prints recall with and without NER on held-out sentences): .venv/bin/python -m pytest -q -s tests/test_pii_recall.py
"""

from __future__ import annotations

import importlib.util
import itertools
import re

import pytest

from simme_common import name_lexicon as lex
from simme_common.ner import DEFAULT_NER_MODEL
from simme_common.pii import PII_KINDS, Anonymizer

KEY = bytes(range(32))
needs_model = pytest.mark.skipif(importlib.util.find_spec(DEFAULT_NER_MODEL) is None,
                                 reason=f"{DEFAULT_NER_MODEL} is not installed (pip install -r requirements.txt)")

# Names in none of the lexicons (faker's en_US lists, the Vietnamese lists), in sentence shapes the person cues
# were NOT written from: what NER itself adds.
UNLISTED = ["Priyanka", "Keanu", "Siobhan", "Oksana", "Dmitri", "Tariq", "Leilani", "Olumide", "Zainab", "Hiroshi",
            "Aaliyah", "Mateo", "Kofi", "Svetlana", "Rohan", "Giulia", "Arjun", "Camila", "Yusuf", "Ingrid"]
HELD_OUT = ["can you ask {v} about it", "haha {v} is so funny", "I saw {v} at the mall", "{v} got the job!",
            "btw {v} says hi", "is {v} coming tonight?", "omg {v} just posted a pic", "we should invite {v} too"]

# Everyday text in which "will", "may", "an", "hope", "mark", "bill" and Vietnamese words that are also name
# syllables must survive, whoever the participants are.
ORDINARY = ["I will call you, may I?", "I hope so", "mark my words", "pay the bill tonight", "an apple a day",
            "will you be there?", "you may want to mark it", "hope you feel better", "the bill is due may 5",
            "Will you come?", "May the force be with you", "Hope that helps!", "an toàn là trên hết",
            "mình đi ăn nhé", "mai anh đi học", "phạm vi rộng lắm", "em thanh toán rồi nha", "trời ơi nóng quá",
            "đi thái lan chơi", "ở thành phố hồ chí minh", "Hôm nay trời đẹp", "chị em mình đi cà phê",
            "hey guys what's up", "thanks man", "hi there", "ok see you tomorrow"]


@needs_model
def test_ner_finds_names_in_no_lexicon_that_the_lexicon_misses():
    sentences = [(v, t.format(v=v)) for v in UNLISTED for t in HELD_OUT]

    def recall(anon: Anonymizer) -> float:
        outs = anon.texts([s for _, s in sentences])
        return sum(not re.search(rf"\b{v}\b", o) for (v, _), o in zip(sentences, outs)) / len(sentences)

    with_ner = recall(Anonymizer(["Jane Doe"], key=KEY))
    lexicon_only = recall(Anonymizer(["Jane Doe"], key=KEY, ner_model=None))
    print(f"\nnames in no lexicon, {len(sentences)} held-out sentences: recall {with_ner:.3f} with NER "
          f"({DEFAULT_NER_MODEL}), {lexicon_only:.3f} with the lexicon only")
    # A known limit, in docs/privacy.md: the small English model misses about half of such names in short chat
    # lines with no cue ("Priyanka got the job!"); the lexicon alone finds none of them.
    assert lexicon_only < 0.1 and with_ner >= 0.5


@needs_model
def test_everyday_words_that_are_also_names_survive_with_ner_on():
    anon = Anonymizer(["Will Turner", "May Brown", "Hope Davis", "Mark Bill", "Nguyễn Thị An", "Lê Minh"], key=KEY)
    outs = anon.texts(ORDINARY)
    changed = [(t, o) for t, o in zip(ORDINARY, outs) if t != o]
    assert not changed
    assert anon.text("I told Mark yesterday") != "I told Mark yesterday"  # capitalized after a word: a name


def test_missing_model_warns_once_and_falls_back_to_the_lexicon(capfd):
    anon = Anonymizer(["Jane Doe"], key=KEY, ner_model="no_such_spacy_pipeline")
    err = capfd.readouterr().err
    assert anon.ner is None and err.count("\n") == 1 and "warning: NER model 'no_such_spacy_pipeline'" in err
    assert "Sarah" not in anon.text("met Sarah yesterday")  # the lexicon still works
    Anonymizer(["Jane Doe"], key=KEY, ner_model="")
    assert capfd.readouterr().err == ""  # off on purpose: no warning


@needs_model
def test_batched_texts_equal_one_by_one_and_the_gate_skips_plain_messages():
    texts = [t.format(v=v) for v, t in zip(UNLISTED, itertools.cycle(HELD_OUT))] + ORDINARY
    batched = Anonymizer(["Jane Doe"], key=KEY).texts(texts)
    one = Anonymizer(["Jane Doe"], key=KEY)
    assert batched == [one.text(t) for t in texts]
    ner = one.ner
    for plain in ["ok see you tomorrow", "Yeah I think so", "Haha that's funny", "Hôm nay trời đẹp", "I hope so",
                  "Lol ok", "The bill is due"]:
        assert not ner.needs_ner(plain), plain
    assert ner.needs_ner("met Priyanka yesterday") and ner.needs_ner("I told Mark")


@needs_model
def test_new_kinds_keep_a_same_kind_surrogate_and_are_counted_by_kind():
    anon = Anonymizer(["Jane Doe"], key=KEY)
    out = anon.texts(["my coworker Priyanka is so annoying", "met sarah at 123 main st", "SARAH said no",
                      "hôm qua gặp nguyễn văn hùng", "nhà mình ở số 12 ngõ 34 phố huế nha", "tommy ơi đi chơi"])
    first = out[0].split()[2]
    assert first != "Priyanka" and first[0].isupper() and first.isalpha()
    assert re.fullmatch(r"met [a-z]+ at \d+ .+", out[1]) and "123 main st" not in out[1]  # lowercase stays lowercase
    assert out[2].split()[0].isupper() and out[2].split()[0] != "SARAH"
    vi = out[3].split()[-3:]
    assert vi[0] in lex.VI_FAMILY and vi[0] != "nguyễn" and vi[1] == "văn" and vi[2] in lex.VI_SYLLABLES - {"hùng"}
    assert re.fullmatch(r"nhà mình ở số \d+ đường \w+ \w+ nha", out[4])
    assert not out[5].startswith("tommy") and out[5].endswith("ơi đi chơi")
    assert set(anon.replaced) <= set(PII_KINDS)  # what the ingest report counts: kinds, never values
    assert anon.replaced["name_other"] >= 6 and anon.replaced["address_en"] == 1 and anon.replaced["address_vi"] == 1
    again = Anonymizer(["Jane Doe"], key=KEY).texts(["met Sarah", "met SARAH", "met sarah"])
    assert [o.split()[1].lower() for o in again] == [again[0].split()[1].lower()] * 3  # one surrogate per name
