"""Anonymization: secret-keyed, consistent surrogates for participants' names, names nobody listed and the PII
that pii_detect finds.

Every surrogate choice is drawn from a keyed MAC (BLAKE2b with the user's 32-byte key) of the real value, so the
same key gives the same surrogates on every run and nobody without the key can recompute or brute-force the
mapping (a public seed would let anyone enumerate e.g. the Vietnamese mobile space back to the original number).
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
import secrets
from collections import Counter
from pathlib import Path

from . import name_lexicon as lex
from .name_lexicon import VI_GIVEN_SET, VI_MENTION_BEFORE, VOCATIVE_AFTER, VOCATIVE_BEFORE, common_words
from .ner import DEFAULT_NER_MODEL, load_person_ner
from .pii_detect import _MONTH_RE, _MONTHS, _SOCIAL_HOSTS, detect_pii
from .runtime import UserError
from .text_features import strip_diacritics, vi_letters

DEFAULT_KEY_FILE = "~/.config/simme/anonymizer.key"
KEY_BYTES = 32

_NAME_TOKEN_RE = re.compile(r"\w+")

PII_KINDS = ("name", "name_other", "phone", "email", "url", "handle", "address_en", "address_vi", "id", "card", "bank", "ssn",
             "passport", "plate", "dob")


def load_or_create_key(path: str | Path) -> bytes:
    """The anonymizer key at `path`: created on first use (32 random bytes, file 0600, new directories 0700)."""
    path = Path(path).expanduser()
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
        os.chmod(path.parent, 0o700)  # mkdir's mode is masked by the umask
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise UserError(f"the anonymizer key file ($SIMME_KEY_FILE) holds {len(key)} bytes, not {KEY_BYTES}; "
                            "restore it from your backup, or move it away to start a new mapping") from None
        return key
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


def is_vietnamese_name(name: str) -> bool:
    """Vietnamese names: Vietnamese letters or a common Vietnamese family name first."""
    if any(c in vi_letters() for c in name):
        return True
    first = name.split()[0] if name.split() else ""
    return strip_diacritics(first) in _vi_family_names()


@functools.lru_cache(maxsize=1)
def _vi_family_names() -> set[str]:
    from faker.providers.person.vi_VN import Provider

    return {strip_diacritics(n) for n in Provider.last_names}


def message_fingerprint(timestamp_ms: int, sender: str, text: str, key: bytes = b"") -> str:
    """Content fingerprint of an original message (the same message in two exports -> the same value), so a re-run
    can count what is new; keyed for anonymized outputs, unkeyed for --no_anonymize ones, which hold the text."""
    mac = hashlib.blake2b(f"{timestamp_ms}\x1f{sender}\x1f{text}".encode("utf-8", "replace"), key=key,
                          digest_size=12, person=b"simme-message")
    return mac.hexdigest()


class Anonymizer:
    """Secret-keyed, consistent surrogates for participants' names and for PII found in free text.

    State: the key and the real->surrogate mappings, in memory only and never written anywhere; `replaced`
    counts replacements in texts by kind (no values).
    """

    def __init__(self, names: list[str], key: bytes, ner_model: str | None = DEFAULT_NER_MODEL):
        """`names`: the participants; `key`: the secret key; `ner_model`: the spaCy pipeline that finds names nobody
        listed (None or "" for the name lexicon only; a missing model warns once and falls back to it)."""
        from faker import Faker
        from faker.providers.person.vi_VN import Provider as ViNames

        if len(key) < 16:
            raise ValueError("the anonymizer key must be at least 16 random bytes")
        self._key = key
        self._en = Faker("en_US")
        self._vi = Faker("vi_VN")
        self._vi_last = list(ViNames.last_names)
        self._vi_middle = list(ViNames.middle_names)
        self._vi_first = list(ViNames.first_names_male) + list(ViNames.first_names_female)
        self._vi_wide_last = sorted(n.capitalize() for n in lex.VI_FAMILY)
        self._vi_wide_first = sorted(n.capitalize() for n in lex.VI_SYLLABLES - {"văn", "thị"})
        self.whole_map: dict[str, str] = {}
        self.pii_map: dict[tuple[str, str], str] = {}
        self.replaced: Counter = Counter()
        # lowercase name part (or its unaccented spelling) -> (real part, surrogate part, is a common word)
        self._exact: dict[str, tuple[str, str, bool]] = {}
        self._folded: dict[str, tuple[str, str, bool]] = {}
        self._used: set[str] = set()
        self._odd_names: list[tuple[str, str]] = []
        self._given, self._family = lex.other_names()
        self._other_lower = frozenset(n.lower() for n in (*self._given, *self._family, *VI_GIVEN_SET))
        real_parts = {strip_diacritics(p).lower() for name in names for p in name.split()}  # folded
        for name in sorted(set(names)):
            self._add_name(name, real_parts)
        self._real_parts = real_parts
        self.ner = load_person_ner(ner_model)

    def __repr__(self) -> str:
        return f"Anonymizer({len(self.whole_map)} names)"  # never the key

    def _rng(self, *parts: str) -> random.Random:
        """A generator seeded by the keyed MAC of `parts`: reproducible with the key, unguessable without it."""
        mac = hashlib.blake2b("\x1f".join(parts).encode(), key=self._key, digest_size=16, person=b"simme-surrogate")
        return random.Random(int.from_bytes(mac.digest(), "big"))

    def _faker(self, fk, *parts: str):
        fk.seed_instance(self._rng(*parts).getrandbits(64))
        return fk

    def fingerprint(self, timestamp_ms: int, sender: str, text: str) -> str:
        """Keyed message_fingerprint: a short message cannot be guessed from it without the key."""
        return message_fingerprint(timestamp_ms, sender, text, self._key)

    def chat_id(self, thread_key: str) -> str:
        """Keyed id of a conversation (its key is a folder name, which can hold a name)."""
        return "c" + "%012x" % self._rng("chat", thread_key).getrandbits(48)

    def _add_name(self, name: str, real_parts: set[str]) -> None:
        """Register a person's name: every part gets a consistent surrogate part of the same kind."""
        if name in ("Facebook user", "") or name in self.whole_map:
            return
        parts = name.split()
        vi = is_vietnamese_name(name)
        new = []
        for i, part in enumerate(parts):
            known = self._exact.get(part.lower())
            if known and known[0] == part:
                new.append(known[1])
                continue
            if vi and part in ("Văn", "Thị") and 0 < i < len(parts) - 1:
                new.append(part)  # gender-marking middle names are not identifying
                continue
            role = ("last" if i == 0 and len(parts) > 1 else "first" if i == len(parts) - 1 else "middle") if vi else \
                ("last" if i == len(parts) - 1 and len(parts) > 1 else "first")
            sur = self._draw_part(part, role, vi, real_parts)
            if re.fullmatch(r"\w+", part) and len(part) > 1:
                low = part.lower()
                common = common_words(vi)
                entry = (part, sur, low in common or strip_diacritics(low) in common)
                self._exact.setdefault(low, entry)
                self._folded.setdefault(strip_diacritics(low), entry)
            new.append(sur)
        self.whole_map[name] = " ".join(new)
        # Names with emoji/punctuation are replaced literally; an emoji-only name is not (it would eat every ❤️).
        if not re.fullmatch(r"[\w ]+", name) and len(re.findall(r"\w", name)) >= 2:
            self._odd_names.append((name, self.whole_map[name]))

    def _draw_part(self, part: str, role: str, vi: bool, real_parts: set[str], wide: bool = False) -> str:
        """Keyed surrogate of one name part: new (while the list lasts), and unaccented neither the real part nor any
        real name part. `wide`: Vietnamese parts from the name lexicon (~150 syllables), not faker's 35 given names,
        which the many names nobody listed would exhaust."""
        key_part = strip_diacritics(part).lower()
        if vi and wide:
            pools = {"last": self._vi_wide_last, "first": self._vi_wide_first, "middle": self._vi_wide_first}
        else:
            pools = {"last": self._vi_last, "first": self._vi_first, "middle": self._vi_middle}
        for attempt in range(80):
            rng = self._rng("name", role, "vi" if vi else "en", key_part, str(attempt))
            if vi:
                s = rng.choice(pools[role])
            else:
                fk = self._faker(self._en, "name", role, key_part, str(attempt))
                s = fk.last_name() if role == "last" else fk.first_name()
            # Compared unaccented: "Hưng" for "Hùng" would leave "hung" (typed without accents) unchanged.
            folded = strip_diacritics(s).lower()
            # Nor containing one: "Janet" would carry "Jane" into the output bytes.
            inner = {folded[i:j] for i in range(len(folded)) for j in range(i + 4, len(folded) + 1)}
            if (s not in self._used or attempt >= 40) and folded != key_part and folded not in real_parts and inner.isdisjoint(real_parts) \
                    and key_part not in folded and s.lower() not in common_words(vi):
                break
        self._used.add(s)
        return s

    def name(self, real: str) -> str:
        """Surrogate of a participant's display name (consistent; unknown names are registered on the fly)."""
        if real not in self.whole_map:
            self._add_name(real, set())
        return self.whole_map.get(real, real)

    def _surrogate(self, kind: str, value: str) -> str:
        """Consistent same-kind surrogate of one PII value."""
        key = (kind, value)
        if key in self.pii_map:
            return self.pii_map[key]
        norm = re.sub(r"\D", "", value) if kind in ("phone", "id", "card", "bank", "ssn") else value.lower()
        for attempt in range(20):
            # Faker's words can carry a real name ("12 Williams Street" for Will): drawn again, keyed.
            sur = self._draw_surrogate(kind, value, norm, norm + ("\x1f%d" % attempt if attempt else ""))
            low = strip_diacritics(sur).lower()
            if kind not in ("email", "url", "handle", "address_en", "address_vi") or \
                    not any(p in low for p in self._real_parts if len(p) > 2):
                break
        self.pii_map[key] = sur
        return sur

    def _draw_surrogate(self, kind: str, value: str, norm: str, seed: str) -> str:
        """One keyed draw of a same-kind surrogate of `value` (`norm`: its normalized form; `seed`: the MAC's input)."""
        rng = self._rng("pii", kind, seed)
        if kind == "email":
            fk = self._faker(self._en, "email", seed)
            return f"{fk.user_name()}@{fk.free_email_domain()}"
        if kind == "url":
            return self._url(value, norm, seed)
        if kind == "handle":
            return "@" + self._faker(self._en, "handle", seed).user_name()
        if kind == "address_en":
            return self._faker(self._en, "address", seed).street_address()
        if kind == "address_vi":
            return f"số {rng.randrange(1, 300)} đường {rng.choice(self._vi_last)} {rng.choice(self._vi_first)}"
        if kind == "dob":
            return _replace_date(value, rng)
        return _replace_digits(value, kind, rng)

    def _url(self, value: str, norm: str, seed: str) -> str:
        """A link to the same social site with another profile, or another domain with a path of the same shape."""
        bare = re.sub(r"^(?:https?://)?(?:www\.)?", "", norm)
        host, _, path = bare.partition("/")
        prefix = re.match(r"(?i)(?:https?://)?(?:www\.)?", value).group()
        fk = self._faker(self._en, "url", seed)
        if host in _SOCIAL_HOSTS:
            return f"{prefix}{host}/{fk.user_name()}" if path else value
        return f"{prefix}{fk.domain_name()}" + (f"/{fk.slug()}" if path else "")

    def text(self, text: str) -> str:
        """Replace names and PII inside one message text with their surrogates."""
        return self.texts([text])[0]

    def texts(self, texts: list[str]) -> list[str]:
        """Replace names and PII inside message texts with their surrogates (NER batched over the texts)."""
        texts = [self._replace_pii(t) for t in texts]
        ner_words = self.ner.person_words(texts) if self.ner else [[] for _ in texts]
        return [self._replace_names(t, w) for t, w in zip(texts, ner_words)]

    def _replace_pii(self, text: str) -> str:
        """The detect_pii kinds and names with emoji/punctuation, replaced."""
        spans = detect_pii(text)
        if spans:
            out, last = [], 0
            for start, end, kind in spans:
                out += [text[last:start], self._surrogate(kind, text[start:end])]
                self.replaced[kind] += 1
                last = end
            text = "".join(out) + text[last:]
        for real, sur in self._odd_names:  # names with emoji/punctuation cannot be matched part by part
            if real in text:
                text = text.replace(real, sur)
        return text

    def _replace_names(self, text: str, ner_words: list[lex.Span]) -> str:
        """Participants' name parts, and the names nobody listed that NER or the name lexicon find."""
        spans = {s[0]: s for s in lex.find_name_spans(text)}
        spans.update({s[0]: s for s in ner_words})
        # Word-by-word dictionary lookup: O(words), whatever the number of people (a regex alternation of
        # thousands of names would be O(names) at every position). Most messages name nobody: one C-level set
        # test skips the per-word callback for them.
        if not spans:
            words = _NAME_TOKEN_RE.findall(text.lower())
            if self._exact.keys().isdisjoint(words) and self._folded.keys().isdisjoint(words) and \
                    self._other_lower.isdisjoint(words):
                return text
        return _NAME_TOKEN_RE.sub(lambda m: self._name_token(m, spans.get(m.start())), text)

    def _name_token(self, m: re.Match, span: lex.Span | None) -> str:
        token = m.group()
        low = token.lower()
        entry = self._exact.get(low)
        if entry is None and low.isascii():
            entry = self._folded.get(low)  # "hung" for "Hùng": typed without accents; "mình" never matches "Minh"
        if entry is None:
            if span and span[3] and span[2] == "middle" and low in ("văn", "thị", "van", "thi"):
                return token  # gender-marking middle names are not identifying (as for participants)
            return self._third_party(token, span[2], span[3]) if span else self._other_name(m)
        real, sur, common = entry
        if common and not span and not self._is_name_in_context(m, real):
            return token
        self.replaced["name"] += 1
        if low.isascii() and not real.isascii():  # typed without accents: so is the surrogate
            sur = strip_diacritics(sur)
        if token.isupper() and len(token) > 1:
            return sur.upper()
        return sur.lower() if token.islower() else sur

    def _other_name(self, m: re.Match) -> str:
        """A capitalized given name nobody listed, or a family name right after a given name: a keyed surrogate."""
        token = m.group()
        if token in self._given:
            role = "first"
        elif token in VI_GIVEN_SET:
            prv = re.search(r"(\w+)[\s,]{1,3}$", m.string[max(0, m.start() - 24):m.start()])
            nxt = re.match(r"[\s,]{1,3}(\w+)", m.string[m.end():m.end() + 12])
            if not ((prv and prv.group(1).lower() in VI_MENTION_BEFORE) or (nxt and nxt.group(1).lower() in VOCATIVE_AFTER)):
                return token
            role = "first"
        elif token in self._family:
            prv = re.search(r"(\w+) $", m.string[max(0, m.start() - 24):m.start()])
            if not prv or not (prv.group(1) in self._given or prv.group(1).lower() in self._exact):
                return token
            role = "last"
        else:
            return token
        return self._third_party(token, role, role == "first" and token in VI_GIVEN_SET)

    def _third_party(self, token: str, role: str, vi: bool) -> str:
        """Keyed surrogate of one word of a name nobody listed, in the word's casing ("sarah", "SARAH", "Sarah")."""
        key = ("name_other", role, strip_diacritics(token).lower() if token.isascii() else token.lower())
        if key not in self.pii_map:
            self.pii_map[key] = self._draw_part(token[:1].upper() + token[1:].lower(), role, vi, self._real_parts, wide=True)
        self.replaced["name_other"] += 1
        sur = self.pii_map[key]
        if token.isascii() and not sur.isascii():  # typed without accents: so is the surrogate
            sur = strip_diacritics(sur)
        if token.isupper() and len(token) > 1:
            return sur.upper()
        return sur.lower() if token.islower() else sur

    def _is_name_in_context(self, m: re.Match, real: str) -> bool:
        """A name part that is also a common word counts as a name only capitalized mid-sentence, as a vocative
        ("an ơi", "hi Will") or next to another name part ("will smith")."""
        s, token = m.string, m.group()
        nxt = re.match(r"[\s,]{0,3}(\w+)", s[m.end():m.end() + 24])
        prv = re.search(r"(\w+)[\s,]{0,3}$", s[max(0, m.start() - 24):m.start()])
        nxt_w, prv_w = (nxt.group(1).lower() if nxt else ""), (prv.group(1).lower() if prv else "")
        if nxt_w in VOCATIVE_AFTER:
            return True
        titled = token == real and token[:1].isupper() and not token.isupper()
        if titled and prv_w in VOCATIVE_BEFORE:
            return True
        for w in (prv_w, nxt_w):
            e = self._exact.get(w) or (self._folded.get(w) if w.isascii() else None)
            if e and not e[2]:
                return True
        before = s[:m.start()].rstrip(" \t\"'(")
        return titled and bool(before) and before[-1] not in ".!?\n:;"


def _replace_digits(value: str, kind: str, rng: random.Random) -> str:
    """Same layout, new digits (and new capitals for plates and passports): keeps '+', separators, a phone's
    country/network prefix and a card's first digit."""
    keep = 0
    digits = re.sub(r"\D", "", value)
    if kind == "phone":
        keep = 3 if value.startswith("+84") or digits.startswith("84") else 2 if value.startswith(("+", "0")) else 0
    elif kind == "card":
        keep = 1
    elif kind == "id":
        keep = 1 if digits.startswith("0") else 0
    letters = kind in ("plate", "passport")
    sur = value
    for _ in range(20):
        out, seen = [], 0
        for ch in value:
            if ch.isdigit():
                out.append(ch if seen < keep else str(rng.randrange(10)))
                seen += 1
            elif letters and "A" <= ch <= "Z":
                out.append(rng.choice("ABCDEFGHKLMNPRSTUVXYZ"))
            else:
                out.append(ch)
        sur = "".join(out)
        if sur != value:
            return sur
    return sur


def _replace_date(value: str, rng: random.Random) -> str:
    """Another date in the same format: years 1960-2005, day and month numbers 1-12, month names swapped."""
    def number(m: re.Match) -> str:
        g = m.group()
        if len(g) == 4:
            return str(rng.randrange(1960, 2006))
        return str(rng.randrange(1, 13)).zfill(len(g)) if len(g) == 2 else str(rng.randrange(1, 10))

    def month(m: re.Match) -> str:
        name = rng.choice(_MONTHS)
        name = name[:len(m.group())] if len(m.group()) <= 4 else name
        return name.capitalize() if m.group()[0].isupper() else name

    out = re.sub(r"\d+", number, value)
    return re.sub(rf"(?i)\b{_MONTH_RE}\b", month, out)
