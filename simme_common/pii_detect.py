"""PII detectors: the patterns (and libphonenumber) that find phones, e-mails, links, handles, addresses, IDs,
cards, bank numbers, SSNs, passports, plates and dates of birth in free text; 01 replaces what they find, 04
counts it in the twin's replies."""

from __future__ import annotations

import re

from .text_features import URL_PATTERN

_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")

_TLDS = r"(?:com|net|org|vn|io|me|co|info|biz|edu|gov|app|dev|tv|ly|gg|us|uk|ca|au|link|xyz)"

# "jane dot doe at gmail dot com", "jane(at)gmail.com", "jane a còng gmail chấm com"
_OB_AT = r"(?:\s*[(\[{<]\s*at\s*[)\]}>]\s*|\s+at\s+|\s+a còng\s+)"
_OB_DOT = r"(?:\s*[(\[{<]\s*dot\s*[)\]}>]\s*|\s+dot\s+|\s+chấm\s+|\.)"
_OBF_EMAIL_RE = re.compile(rf"\b[\w+-]+(?:{_OB_DOT}[\w+-]+)*{_OB_AT}[\w-]+(?:{_OB_DOT}[\w-]+)*{_OB_DOT}{_TLDS}\b",
                           re.IGNORECASE)
_OBF_HINT_RE = re.compile(r"\bat\b|\(at\)|\[at\]|a còng", re.IGNORECASE)

_PII_URL_RE = re.compile(URL_PATTERN, re.IGNORECASE)
# Bare domains: lowercase TLD only, so "good.Me too" (a missing space) is no link.
_DOMAIN_RE = re.compile(rf"(?<![\w@.-])(?:[A-Za-z0-9-]+\.)+{_TLDS}\b(?:/[^\s<>\"']*)?")
_DOT_TLD_RE = re.compile(rf"\w\.{_TLDS}\b")  # cheap gate before the link patterns
_SOCIAL_HOSTS = ("facebook.com", "fb.com", "m.facebook.com", "instagram.com", "tiktok.com", "twitter.com", "x.com",
                 "linkedin.com", "zalo.me", "youtube.com", "github.com", "t.me", "threads.net")

_HANDLE_RE = re.compile(r"(?<![\w.@])@[A-Za-z0-9_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])?")

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
# Lowercase street addresses ("123 main st", "45 oak avenue apt 2"): only the street words that are no everyday
# phrase ("5 minutes down the road", "a 2 way street" are not addresses).
_EN_NOT_STREET = (r"(?:the|a|an|of|to|in|on|at|by|down|up|from|my|your|our|his|her|their|this|that|more|other|way|ways"
                  r"|minutes?|mins?|hours?|hrs?|days?|weeks?|miles?|mi|km|blocks?|times?|lanes?|steps?|and|or|is|are)")
_ADDR_EN_LOWER_RE = re.compile(
    rf"(?i)\b\d{{1,6}}\s+(?:(?!{_EN_NOT_STREET}\b)[a-z]+\.?\s+){{1,3}}(?:street|st|avenue|ave|road|rd|boulevard|blvd"
    rf"|highway|hwy|parkway|pkwy|ln|dr)\b(?:,?\s+(?:apt|suite|unit)\.?\s*#?\w+)?"
)
# Lowercase Vietnamese addresses ("số 12 ngõ 34 phố huế", "45 đường lê lợi, quận 1", "hẻm 51 lê văn sỹ"). A street
# name is 1-4 words, none a particle or function word, so "phố huế nha" stops before "nha".
_VI_STOP = (r"(?:nha|nhé|nhe|nhá|nè|đó|đấy|ạ|à|ha|hả|không|ko|k|rồi|thì|là|và|với|có|để|mà|nhưng|luôn|đi|nhà|ở|gần|cạnh"
            r"|trước|sau|bên|qua|lúc|khi|hôm|mai|tối|sáng|chiều|này|kia|đây|mình|tui|tôi|em|anh|chị|ơi|cho|của|thôi|nữa|vậy"
            r"|phường|quận|huyện|xã|tp|thành|tỉnh)")
_VI_NAME_WORDS = rf"(?:(?!{_VI_STOP}\b)[^\W\d_]+)(?: (?!{_VI_STOP}\b)[^\W\d_]+){{0,3}}"
_VI_NUM = r"\d{1,4}[a-zA-Z]?(?:/\d{1,4}[a-zA-Z]?)*"
_VI_ALLEY = rf"(?:ngõ|ngách|hẻm|kiệt)\s+{_VI_NUM}"
_VI_ADMIN_TAIL = rf"(?:\s*,?\s*\b(?:phường|quận|huyện|xã|thị xã|thành phố|tỉnh|tp\.?|p\.|q\.)\s*(?:\d{{1,2}}\b|{_VI_NAME_WORDS}))"
_ADDR_VI_LOWER_RE = re.compile(
    rf"(?i)(?:\bsố\s+)?(?:"
    rf"\b{_VI_NUM}(?:\s*,?\s*{_VI_ALLEY})*\s*,?\s*(?:đường|phố)\s+(?:số\s+\d{{1,3}}\b|{_VI_NAME_WORDS})"  # 45 đường lê lợi
    rf"|(?:\b{_VI_NUM}\s*,?\s*)?\b{_VI_ALLEY}(?:\s*,?\s*{_VI_ALLEY})*(?:\s*,?\s*(?:(?:đường|phố)\s+)?{_VI_NAME_WORDS})?"
    rf"|\b{_VI_NUM}\s+{_VI_NAME_WORDS}(?={_VI_ADMIN_TAIL})"  # 12 nguyễn huệ, quận 1
    rf"){_VI_ADMIN_TAIL}*"
)
_ADDR_VI_CUE_RE = re.compile(rf"[Đđ]ường|[Pp]hố |[Nn]gõ|[Hh]ẻm|[Kk]iệt|^[Ss]ố|{_VI_ADMIN}")

_NUMBER_RE = re.compile(
    r"(?<![\w+/.,])("
    r"\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?"  # card number in groups of four
    r"|\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}"  # international phone (+84 912 345 678)
    r"|\(?0\d{1,3}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}"  # Vietnamese 0xx phone, or a 12-digit CCCD
    r"|\(?\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}"  # US phone
    r"|\d{8,19}"  # contiguous IDs, accounts, cards
    r")(?![\w/])"
)

# Seven digits with at most separators between them: the only texts worth handing to phonenumbers (slow).
_PHONE_HINT_RE = re.compile(r"\d(?:[\s().+-]{0,2}\d){6}")

_BANK_CONTEXT_RE = re.compile(r"(stk|số tài khoản|tài khoản|account|acct|a/c|bank|iban|tk)\W{0,3}$", re.IGNORECASE)

_SSN_RE = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_SSN_CUE_RE = re.compile(r"(?i:\b(?:ssn|social security(?:\s+(?:number|no\.?|#))?)\s*(?:is|:|#|=)?\s*)(\d{3}[ -]?\d{2}[ -]?\d{4})\b")
_PASSPORT_RE = re.compile(r"(?i:\b(?:passport|hộ chiếu)\b[^\n\d]{0,20}?)\b([A-Z]{1,2}\d{6,8}|\d{9})\b")
_PLATE_VN_RE = re.compile(r"\b\d{2}-?[A-Z]{1,2}\d?[- ]?\d{3}\.\d{2}\b|\b\d{2}[A-Z]{1,2}\d?-\d{4,5}\b")
_PLATE_CUE_RE = re.compile(r"(?i:\b(?:license plate|licence plate|plate|biển số(?: xe)?|bsx|tag)(?:\s*(?:no\.?|number|#|is|là|:))*\s*)"
                           r"([A-Z0-9]{1,4}[- ]?[A-Z0-9]{2,5})\b")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_MONTH_RE = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_DATE = (rf"(?:\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:19|20)?\d{{2}}|\d{{1,2}}/\d{{1,2}}|(?:19|20)\d{{2}}-\d{{1,2}}-\d{{1,2}}"
         rf"|{_MONTH_RE}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+(?:19|20)\d{{2}})?"
         rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_RE}\.?(?:,?\s+(?:19|20)\d{{2}})?"
         rf"|(?:ngày\s+)?\d{{1,2}}\s+tháng\s+\d{{1,2}}(?:\s*(?:năm|,)?\s*(?:19|20)\d{{2}})?)")
_DOB_RE = re.compile(rf"(?i:\b(?:born(?:\s+on)?|birthday(?:\s+is)?|b-?day|dob|d\.o\.b\.?|date of birth|ngày sinh|sinh ngày"
                     rf"|sinh nhật|sinh vào|sn)\b[^\n\d]{{0,12}}?)(?i:({_DATE}))(?!\d)")

_DIGIT_RE = re.compile(r"\d")


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


def _phone_spans(text: str) -> list[tuple[int, int, str]]:
    """Phones in any national or international format of Vietnam or the US (libphonenumber, valid numbers only)."""
    import phonenumbers

    spans = []
    for region in ("VN", "US"):
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            spans.append((m.start, m.end, "phone"))
    return spans


def detect_pii(text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans of PII in `text`, leftmost-longest; kinds are PII_KINDS but "name"."""
    found: list[tuple[int, int, str]] = []
    if "@" in text:
        found += [(m.start(), m.end(), "email") for m in _EMAIL_RE.finditer(text)]
        found += [(m.start(), m.end(), "handle") for m in _HANDLE_RE.finditer(text)]
    if _OBF_HINT_RE.search(text):
        for m in _OBF_EMAIL_RE.finditer(text):
            s = m.group()
            # "look at google.com" is a link, not an address: a spelled-out " at " needs a spelled-out dot too.
            if re.search(r"\sat\s", s, re.IGNORECASE) and not re.search(r"\s(?:dot|chấm)\s|\(dot\)|\[dot\]", s, re.IGNORECASE):
                continue
            found.append((m.start(), m.end(), "email"))
    if "." in text and (_DOT_TLD_RE.search(text) or "http" in text or "www" in text):
        for rx in (_PII_URL_RE, _DOMAIN_RE):  # a sentence's closing punctuation is no part of the link
            found += [(m.start(), m.start() + len(m.group().rstrip(".,;:!?)]}'\"")), "url") for m in rx.finditer(text)]
    if _DIGIT_RE.search(text):
        found += [(m.start(), m.end(), "address_en") for rx in (_ADDR_EN_RE, _ADDR_EN_LOWER_RE) for m in rx.finditer(text)]
        found += [(m.start(), m.end(), "address_vi") for m in _ADDR_VI_LOWER_RE.finditer(text)]
        found += [(m.start(), m.end(), "address_vi") for m in _ADDR_VI_RE.finditer(text)
                  if _ADDR_VI_CUE_RE.search(m.group())]
        for m in _NUMBER_RE.finditer(text):
            kind = classify_number(m.group(1), text[max(0, m.start() - 25):m.start()])
            if kind:
                found.append((m.start(1), m.end(1), kind))
        if _PHONE_HINT_RE.search(text):
            found += _phone_spans(text)
        found += [(m.start(), m.end(), "ssn") for m in _SSN_RE.finditer(text) if m.group()]
        found += [(m.start(1), m.end(1), "ssn") for m in _SSN_CUE_RE.finditer(text)]
        found += [(m.start(1), m.end(1), "passport") for m in _PASSPORT_RE.finditer(text)]
        found += [(m.start(), m.end(), "plate") for m in _PLATE_VN_RE.finditer(text)]
        found += [(m.start(1), m.end(1), "plate") for m in _PLATE_CUE_RE.finditer(text)
                  if re.search(r"\d", m.group(1)) and re.search(r"[A-Z]", m.group(1))]
        found += [(m.start(1), m.end(1), "dob") for m in _DOB_RE.finditer(text)]
    if len(found) < 2:
        return found
    # Specific kinds win ties over the generic number/phone patterns: a cue-found SSN beats the same digits as an ID.
    rank = {k: i for i, k in enumerate(("email", "url", "ssn", "passport", "dob", "plate", "card", "bank", "phone",
                                        "id", "address_en", "address_vi", "handle"))}
    found.sort(key=lambda s: (s[0], -(s[1] - s[0]), rank[s[2]]))
    out, end = [], -1
    for s in found:
        if s[0] >= end:
            out.append(s)
            end = s[1]
    return out


def find_pii(text: str) -> list[str]:
    """Kinds of PII-looking strings in `text` (01's detectors; both address kinds are reported as "address")."""
    return ["address" if k.startswith("address") else k for _, _, k in detect_pii(text)]
