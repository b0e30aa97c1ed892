"""Anonymization: consistent surrogates for names and PII (phones, e-mails, URLs, addresses, IDs, cards), and the
PII detectors that 04 reuses."""

from __future__ import annotations

import re
import unicodedata


_VI_CHARS = set("ăâđêôơưĂÂĐÊÔƠƯáàảãạấầẩẫậắằẳẵặéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựýỳỷỹỵ")


_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


_PII_URL_RE = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)


_UPPER = "A-ZÀÁÂÃÈÉÊÌÍÒÓÔÕÙÚÝĂĐĨŨƠƯẠ-Ỹ"


_WORD = r"[\wÀ-ỹ]"


_ADDR_EN_RE = re.compile(
    rf"\b\d{{1,6}}\s+(?:[A-Z][a-z]+\.?\s+){{1,3}}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|"
    rf"Place|Pl|Terrace|Parkway|Pkwy|Circle|Cir|Highway|Hwy)\b(?:,?\s+(?:Apt|Suite|Unit)\.?\s*#?\w+)?"
)


_VI_ADMIN = r"(?:[Pp]hường|[Qq]uận|[Hh]uyện|[Xx]ã|[Tt]hị xã|[Tt]hành phố|[Tt]ỉnh|TP\.?|P\.|Q\.)"


_ADDR_VI_RE = re.compile(
    rf"(?:\b[Ss]ố\s+)?\b\d{{1,4}}[A-Za-z]?(?:/\d{{1,4}}[A-Za-z]?)*\s+(?:(?:[Đđ]ường|[Pp]hố|[Nn]gõ|[Hh]ẻm|[Kk]iệt)\s+)?"
    rf"[{_UPPER}]{_WORD}*(?:\s+[{_UPPER}]{_WORD}*){{0,4}}"
    rf"(?:\s*,\s*{_VI_ADMIN}\s*(?:\d{{1,2}}\b|[{_UPPER}]{_WORD}*(?:\s+[{_UPPER}]{_WORD}*){{0,3}}))*"
)


_NUMBER_RE = re.compile(
    r"(?<![\w+/.,])("
    r"\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?"  # card number in groups of four
    r"|\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}"  # international phone (+84 912 345 678)
    r"|\(?0\d{1,3}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}"  # Vietnamese 0xx phone, or a 12-digit CCCD
    r"|\(?\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}"  # US phone
    r"|\d{8,19}"  # contiguous IDs, accounts, cards
    r")(?![\w/])"
)


_BANK_CONTEXT_RE = re.compile(r"(stk|số tài khoản|tài khoản|account|acct|a/c|bank|iban|tk)\W{0,3}$", re.IGNORECASE)


_DIGIT_RE = re.compile(r"\d")


_NAME_TOKEN_RE = re.compile(r"\w+")


def is_vietnamese_name(name: str) -> bool:
    """Vietnamese names: Vietnamese letters or a common Vietnamese family name first."""
    if any(c in _VI_CHARS for c in name):
        return True
    from faker.providers.person.vi_VN import Provider

    first = name.split()[0] if name.split() else ""
    return _strip_accents(first) in {_strip_accents(n) for n in Provider.last_names}


def _strip_accents(text: str) -> str:
    """ASCII-fold Vietnamese/Latin letters (đ -> d)."""
    text = text.replace("đ", "d").replace("Đ", "D")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _luhn_ok(digits: str) -> bool:
    """Luhn checksum of a card number."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        v = int(d) * (2 if i % 2 else 1)
        total += v - 9 if v > 9 else v
    return total % 10 == 0


def classify_number(candidate: str, before: str) -> str | None:
    """Kind of PII a digit run is (phone, id, card, bank) or None for an ordinary number."""
    groups = re.findall(r"\d+", candidate)
    digits = "".join(groups)
    n = len(digits)
    if "  " in candidate or (len(groups) > 1 and min(len(g) for g in groups[1:]) < 2):
        return None
    contiguous = candidate.isdigit()
    if candidate.startswith("+") and 8 <= n <= 15:
        return "phone"
    if contiguous and n == 12:
        return "id"  # CCCD
    if 13 <= n <= 19 and (contiguous or all(len(g) == 4 for g in groups[:-1])):
        return "card" if _luhn_ok(digits) else "bank"
    if digits.startswith("0") and n in (10, 11):
        return "phone"
    if digits.startswith("84") and n in (11, 12) and not contiguous:
        return "phone"
    if n == 10 and re.fullmatch(r"\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}", candidate):
        return "phone"
    if 8 <= n <= 16 and _BANK_CONTEXT_RE.search(before):
        return "bank"
    if contiguous and n == 9:
        return "id"  # CMND
    return None


class Anonymizer:
    """Consistent surrogates for names and PII (phones, emails, URLs, addresses, IDs, card/bank numbers).

    State: the real->surrogate mappings, kept in memory only and never written anywhere.
    """

    def __init__(self, names: list[str], seed: int = 42):
        from faker import Faker
        from faker.providers.person.vi_VN import Provider as ViNames

        self.seed = seed
        self.en = Faker("en_US")
        self.en.seed_instance(seed)
        self.vi = Faker("vi_VN")
        self.vi.seed_instance(seed + 1)
        self._vi_last = list(ViNames.last_names)
        self._vi_middle = list(ViNames.middle_names)
        self._vi_first = list(ViNames.first_names_male) + list(ViNames.first_names_female)
        self.part_map: dict[str, str] = {}
        self.whole_map: dict[str, str] = {}
        self.pii_map: dict[tuple[str, str], str] = {}
        self._used: set[str] = set()
        self._odd_names: list[tuple[str, str]] = []
        real_parts = {p for name in names for p in name.split()}
        for name in sorted(set(names)):
            self._add_name(name, real_parts)

    def _unique(self, make, real: str, real_parts: set[str]) -> str:
        """Draw surrogates until one is new, differs from the real value and is no real name part."""
        for _ in range(50):
            s = make()
            if s not in self._used and s != real and s not in real_parts:
                break
        self._used.add(s)
        return s

    def _add_name(self, name: str, real_parts: set[str]) -> None:
        """Register a person's name: every part gets a consistent surrogate part of the same kind."""
        if name in ("Facebook user", "") or name in self.whole_map:
            return
        parts = name.split()
        vi = is_vietnamese_name(name)
        new = []
        for i, part in enumerate(parts):
            if part in self.part_map:
                new.append(self.part_map[part])
                continue
            if vi:
                pool = self._vi_last if i == 0 and len(parts) > 1 else self._vi_first if i == len(parts) - 1 else self._vi_middle
                make = lambda pool=pool: self.vi.random_element(pool)  # noqa: E731
            else:
                make = self.en.last_name if i == len(parts) - 1 and len(parts) > 1 else self.en.first_name
            if vi and part in ("Văn", "Thị") and 0 < i < len(parts) - 1:
                sur = part  # gender-marking middle names are not identifying
            else:
                sur = self._unique(make, part, real_parts)
            if re.fullmatch(r"\w+", part) and len(part) > 1:
                self.part_map.setdefault(part, sur)
                folded = _strip_accents(part)
                if folded != part and re.fullmatch(r"\w+", folded) and folded not in real_parts:
                    self.part_map.setdefault(folded, _strip_accents(sur))
            new.append(sur)
        self.whole_map[name] = " ".join(new)
        # Names with emoji/punctuation are replaced literally; an emoji-only name is not (it would eat every ❤️).
        if not re.fullmatch(r"[\w ]+", name) and len(re.findall(r"\w", name)) >= 2:
            self._odd_names.append((name, self.whole_map[name]))

    def name(self, real: str) -> str:
        """Surrogate of a participant's display name (consistent; unknown names are registered on the fly)."""
        if real not in self.whole_map:
            self._add_name(real, set())
        return self.whole_map.get(real, real)

    def _surrogate(self, kind: str, value: str) -> str:
        """Consistent same-kind surrogate of one PII value."""
        key = (kind, value)
        if key not in self.pii_map:
            import random
            import hashlib

            rng = random.Random(int(hashlib.sha256(f"{self.seed}:{kind}:{value}".encode()).hexdigest()[:16], 16))
            if kind == "email":
                sur = f"{self.en.user_name()}@{self.en.free_email_domain()}"
            elif kind == "url":
                sur = self.en.url().rstrip("/") + ("/" + self.en.slug() if "/" in value.split("//", 1)[-1] else "")
            elif kind == "address_en":
                sur = self.en.street_address()
            elif kind == "address_vi":
                sur = f"số {rng.randrange(1, 300)} đường {self.vi.random_element(self._vi_last)} {self.vi.random_element(self._vi_first)}"
            else:
                sur = _replace_digits(value, kind, rng)
            self.pii_map[key] = sur
        return self.pii_map[key]

    def text(self, text: str) -> str:
        """Replace names and PII inside one message text with their surrogates."""
        text = _EMAIL_RE.sub(lambda m: self._surrogate("email", m.group()), text)
        text = _PII_URL_RE.sub(lambda m: self._surrogate("url", m.group()), text)
        if _DIGIT_RE.search(text):
            text = _ADDR_EN_RE.sub(lambda m: self._surrogate("address_en", m.group()), text)
            text = _ADDR_VI_RE.sub(self._vi_address, text)
            text = _NUMBER_RE.sub(self._number, text)
        for real, sur in self._odd_names:  # names with emoji/punctuation cannot be matched part by part
            if real in text:
                text = text.replace(real, sur)
        # Word-by-word dictionary lookup: O(words), whatever the number of people (a regex alternation of
        # thousands of names would be O(names) at every position).
        parts = self.part_map
        return _NAME_TOKEN_RE.sub(lambda m: parts.get(m.group(), m.group()), text)

    def _vi_address(self, m: re.Match) -> str:
        """Replace a Vietnamese street address only when it has a street word or an administrative unit."""
        span = m.group()
        if re.search(rf"[Đđ]ường|[Pp]hố |[Nn]gõ|[Hh]ẻm|[Kk]iệt|^[Ss]ố|{_VI_ADMIN}", span):
            return self._surrogate("address_vi", span)
        return span

    def _number(self, m: re.Match) -> str:
        """Replace a digit run that looks like a phone, ID, card or bank number."""
        kind = classify_number(m.group(1), m.string[max(0, m.start() - 25):m.start()])
        return self._surrogate(kind, m.group(1)) if kind else m.group()


def _replace_digits(value: str, kind: str, rng) -> str:
    """Same layout, new digits: keeps '+', separators, a phone's country/network prefix and a card's first digit."""
    keep = 0
    digits = re.sub(r"\D", "", value)
    if kind == "phone":
        keep = 3 if value.startswith("+84") or digits.startswith("84") else 2 if value.startswith(("+", "0")) else 0
    elif kind == "card":
        keep = 1
    elif kind == "id":
        keep = 1 if digits.startswith("0") else 0
    for _ in range(20):
        out, seen = [], 0
        for ch in value:
            if ch.isdigit():
                out.append(ch if seen < keep else str(rng.randrange(10)))
                seen += 1
            else:
                out.append(ch)
        sur = "".join(out)
        if sur != value:
            return sur
    return sur


def find_pii(text: str) -> list[str]:
    """Kinds of PII-looking strings in `text` ("email", "phone", "id", "card", "bank", "address"), with 01's patterns."""
    kinds = []
    if _EMAIL_RE.search(text):
        kinds.append("email")
    for m in _NUMBER_RE.finditer(text):
        kind = classify_number(m.group(1), text[:m.start()])
        if kind:
            kinds.append(kind)
    if _ADDR_EN_RE.search(text) or _ADDR_VI_RE.search(text):
        kinds.append("address")
    return kinds
