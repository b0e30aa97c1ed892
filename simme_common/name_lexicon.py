"""Name lexicons and the rules that find names nobody listed where NER cannot: Vietnamese names in any casing
(a family-name lexicon plus context), nicknames and vocatives ("tommy ơi", "hey tommy"), lowercase and all-caps
English given names ("met sarah", "SARAH said no"). pii.Anonymizer replaces what `find_name_spans` returns.

Every rule here trades recall for the everyday words that are also names ("will", "may", "hope", "mark", "bill",
"an", "mai" = tomorrow): a common word is only ever a name next to a cue, never on its own.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from .text_features import strip_diacritics, vi_letters

# Words around a name that mark it as a name even when the name is also a common word ("an ơi", "hi Will").
VOCATIVE_AFTER = {"ơi", "oi", "à", "ạ", "ah"}
# Common Vietnamese given names: also syllables of places ("Hà Nội", "Bình Dương"), so only taken after or before a
# word that addresses or mentions a person ("gặp Tuấn", "anh Tuấn", "Tuấn ơi").
VI_GIVEN = ("An Anh Bảo Bình Châu Chi Cường Dũng Duy Dương Đạt Đức Giang Hà Hải Hân Hạnh Hiếu Hoa Hòa Hoàng Hùng Hương "
            "Huy Huyền Khánh Khoa Kiên Lan Linh Long Mai Minh My Nam Nga Ngân Ngọc Nhung Nhi Phong Phúc Phương Quân "
            "Quang Quỳnh Sơn Tâm Thảo Thanh Thắng Thành Thủy Thư Tiến Trang Trí Trinh Trung Tú Tuấn Tùng Uyên Vân Việt "
            "Vinh Vy Yến").split()
VI_MENTION_BEFORE = {"anh", "chị", "em", "bạn", "cô", "chú", "bác", "ông", "bà", "gặp", "với", "hỏi", "nhắn", "gọi",
                     "bảo", "thằng", "con", "nhỏ", "bé", "cháu", "cậu", "dì", "mợ"}
VOCATIVE_BEFORE = {"anh", "chị", "chi", "em", "bạn", "cô", "chú", "bác", "ông", "bà", "hi", "hey", "hello", "thanks",
                   "thank", "dear", "yo", "bye", "with", "and", "tell", "ask", "call", "told", "asked"}
VI_GIVEN_SET = frozenset(VI_GIVEN) | frozenset(
    ("Hưng", "Vũ", "Tú", "Hoàng", "Phúc", "Trung", "Quang", "Khoa", "Lộc", "Thảo", "Hằng", "Loan", "Nhàn", "Diệp"))

# Vietnamese family names (about 90 % of people carry one of these) and given/middle-name syllables, lowercase.
VI_FAMILY = frozenset("nguyễn trần lê phạm hoàng huỳnh phan vũ võ đặng bùi đỗ hồ ngô dương lý đinh đoàn trương lâm "
                      "trịnh lương quách vương triệu lưu tôn khúc kiều thái tạ cao hà mai đào châu tô".split())
# Family names that are also everyday words ("mai" tomorrow, "hồ" lake, "cao" tall, "đào" dig): need two name
# syllables after them ("mai anh đi" is "tomorrow you go").
_VI_FAMILY_AMBIGUOUS = frozenset("lê hồ ngô lý lâm thái tạ cao hà mai đào châu tô đỗ vương".split())
VI_SYLLABLES = frozenset(
    "an anh bảo bích bình cường châu chi công cúc dung dũng duy duyên dương đạt điệp định đông đức gia giang hà hải "
    "hạnh hằng hân hậu hiền hiếu hiển hòa hoà hoa hoài hoàng hồng huệ hùng hưng hương hường huy huyền kha khải khang "
    "khánh khoa khôi khuê kiên kiệt kim lan lâm lệ liên linh loan lộc long luân lực ly mai mạnh minh my mỹ nam nga "
    "ngân nghĩa ngọc nguyên nhàn nhân nhật nhi nhung như oanh phát phong phú phúc phụng phương phượng quân quang quế "
    "quốc quý quyên quỳnh sang sơn tài tâm tân thái thắm thắng thanh thành thảo thi thiện thịnh thơ thu thủy thuỷ thúy "
    "thư tiến tín toàn trâm trang trí trinh trọng trung tú tuấn tùng tường tuyết uyên văn thị vân vi việt vinh vũ vy "
    "xuân yến ánh đào diệp hữu thế tấn đình bá".split())
_VI_SYLLABLES_FOLDED = frozenset(strip_diacritics(s) for s in VI_SYLLABLES)
# Unaccented family names that are no English or Vietnamese everyday word ("le", "do", "ho", "ly" are).
_VI_FAMILY_FOLDED_SAFE = frozenset("nguyen tran pham hoang huynh phan dang bui duong truong dinh doan trinh luong "
                                   "quach vuong trieu".split())
_VI_FAMILY_FOLDED = frozenset(strip_diacritics(s) for s in VI_FAMILY)
# Two-syllable words and places that start like a name ("phạm vi" scope, "hoàng gia" royal, "Hà Nam" a province).
_VI_NOT_NAMES = frozenset(("phạm vi", "hoàng gia", "hoàng cung", "hoàng hậu", "hà nam", "hà giang", "hà tiên",
                           "thái bình", "châu mỹ", "châu phi", "châu á", "châu âu", "cao bằng", "lâm đồng",
                           "hồ chí minh", "lý sơn", "trần hưng đạo", "cao thủ", "vương quốc", "đào tạo", "hà lan"))
# A given-name syllable after a cue, not a name when the two make a word ("anh hùng" hero, "em thanh toán" pays).
_VI_COMPOUNDS = frozenset(("anh hùng", "anh minh", "anh linh", "anh tài", "anh thư", "anh em", "chị em", "cô đơn",
                           "em út", "bạn bè", "thanh toán", "thanh niên", "thanh lý", "thành công", "thành phố",
                           "thành viên", "thành thật", "hòa bình", "bình thường", "bình tĩnh", "an toàn", "an ninh",
                           "tâm sự", "tâm trạng", "vinh dự", "nam nữ", "hải sản", "quang cảnh", "long lanh",
                           "tiến bộ", "phúc lợi", "trung tâm", "trung thu", "trung bình", "quốc tế", "mỹ phẩm",
                           "kim loại", "tài khoản", "tài liệu", "thu nhập", "nhân viên", "nhân dịp", "thi cử",
                           "hoa quả", "toàn bộ", "thái độ", "trí tuệ", "như vậy", "như thế", "hiền lành", "nguyên nhân",
                           "thắng lợi", "giang hồ", "công việc", "công ty", "đông người", "bảo vệ", "bảo hiểm",
                           "hồng hào", "xuân hè", "ông bà", "bà con", "cô chú", "chú ý", "hoa hậu", "sang năm"))
# Cues before a lowercase Vietnamese given name ("anh tuấn", "tên là linh"): people, not verbs ("với", "gặp"
# precede places and things as often as people).
_VI_CUE = frozenset(("anh", "chị", "em", "bạn", "cô", "chú", "bác", "thằng", "bé", "cậu", "dì", "mợ", "là", "tên"))
# Words before "ơi" that are no name: kinship, pronouns, exclamations ("trời ơi", "mẹ ơi").
_VI_NOT_VOCATIVE = frozenset("trời ôi mẹ má ba bố cha con anh chị em bạn cô chú bác ông bà dì cậu mợ cháu cưng "
                             "vợ chồng ai người mọi các nhà bồ mày tao tui mình thầy sếp shop ad admin ad ơi".split())
# Vietnamese pet names ("Bin", "Bống", "Tin"): names only after a greeting or before "ơi", where they are no word.
_NICKNAMES = frozenset("bin bi bo bon bống bông cún mít tin tún xu ken tí tèo su na nhím sóc bơ bắp bi bo mon "
                       "miu mi ni nu ti tu ty".split())
# Greetings after which a lowercase word that is no everyday word is a name or nickname ("hey tommy").
_GREETINGS = frozenset(("hi", "hey", "hello", "yo", "bye", "thanks", "thank", "dear", "morning", "night"))
# Chat words no dictionary lists: never names.
_CHAT_WORDS = frozenset("bro bruh bff dude babe bae bestie fam yall ya guys girl gurl sis hun honey sweetie mate "
                        "buddy pal boss sir maam lmao lmfao rofl omg tbh idk imo btw wbu hbu ikr smh ty thx pls plz "
                        "haha hehe hihi hmm hmmm ok okay okie oki yep yup nope yeah yea nah ugh oof aww ooh woah "
                        "whoa alright alrighty ha he hi ho lo ah oh eh uh um hows whats thats its im ive dont cant "
                        "wont didnt doesnt isnt youre theyre lets whos wheres heres theres gonna wanna gotta".split())

_WORD_RE = re.compile(r"\w+")
_LAUGH_RE = re.compile(r"(?i)(?:[hk]*[aeiou]*h[aeiou]+){2,}h?|(\w)\1{2,}")


@functools.lru_cache(maxsize=2)
def common_words(vietnamese: bool) -> frozenset[str]:
    """Lowercase words too common to replace in any casing when a name part equals one ("will", "may", "an").

    English: every word the Brill lexicon (TextBlob) tags as something other than a proper noun ("brown",
    "hope"; not "smith"). Vietnamese: the function words and a few everyday syllables, accented and not; an
    English lexicon would wrongly protect "hung" (Hùng typed without accents).
    """
    from stop_words import get_stop_words

    if vietnamese:
        vi = {w for w in get_stop_words("vi") if " " not in w}
        vi |= {"an", "nam", "mai", "hoa", "lan", "tin", "thu", "ha", "hai", "son", "long", "binh", "minh", "tam",
               "phuc", "vui", "my", "anh", "em", "chi", "hoang", "thanh", "hong", "nga", "ngoc"}
        return frozenset(vi | {strip_diacritics(w) for w in vi})
    import textblob

    words = set(get_stop_words("en"))
    with open(Path(textblob.__file__).parent / "en" / "en-lexicon.txt", encoding="utf-8") as f:
        for line in f:
            word, _, tags = line.partition(" ")
            if word.islower() and tags.split() and tags.split()[0] not in ("NNP", "NNPS"):
                words.add(word)
    return frozenset(words | {"hope", "will", "may", "june", "april", "grace", "joy", "faith", "sunny", "summer",
                              "mark", "bill", "rose", "pat", "art", "sue", "amber", "crystal", "dawn", "iris"})


@functools.lru_cache(maxsize=1)
def other_names() -> tuple[frozenset[str], frozenset[str]]:
    """English (given names, family names) that are no everyday word: names of people nobody listed ("met Sarah")."""
    from faker.providers.person.en_US import Provider as En

    en, vi = common_words(False), common_words(True)

    def rare(n: str) -> bool:
        low = n.lower()
        return low not in en and low not in vi and strip_diacritics(low) not in vi and len(n) > 2

    # Names that are more often places, brands, languages or faiths in chat ("San Francisco", "English").
    not_people = {"English", "Virginia", "Francisco", "Sydney", "Dakota", "Austin", "Mercedes", "Alexa", "Jesus",
                  "Christian", "Jordan", "Paris", "Georgia", "Carolina", "Houston", "Dallas", "Denver", "Phoenix",
                  "Chelsea", "Washington", "Lincoln", "Madison", "Orlando", "Savannah", "Tesla", "Siri", "Camry"}
    given = {n for n in En.first_names if rare(n) and n not in not_people}
    family = {n for n in En.last_names if rare(n) and n not in not_people}
    return frozenset(given), frozenset(family)


@functools.lru_cache(maxsize=1)
def en_stop_words() -> frozenset[str]:
    """English function words ("my", "who", "well"): never a name, capitalized or not."""
    from stop_words import get_stop_words

    return frozenset(get_stop_words("en"))


def is_chat_noise(word: str) -> bool:
    """Laughter, stretched words and chat abbreviations ("hahaha", "heyyy", "idk"): never a name."""
    low = word.lower()
    return low in _CHAT_WORDS or bool(_LAUGH_RE.fullmatch(low)) or bool(re.search(r"(\w)\1\1", low))


def is_vi_name_syllable(word: str) -> bool:
    """A Vietnamese given, middle or family name syllable, in any casing (accented, or unaccented ASCII)."""
    low = word.lower()
    if low in VI_SYLLABLES or low in VI_FAMILY:
        return True
    return low.isascii() and low in _VI_SYLLABLES_FOLDED


def has_vi_letters(word: str) -> bool:
    """Whether the word holds a letter only Vietnamese uses (ư, ơ, ạ, ...)."""
    return any(c in vi_letters() for c in word)


Span = tuple[int, int, str, bool]  # start, end, role ("first", "middle", "last"), Vietnamese


def find_name_spans(text: str) -> list[Span]:
    """Word spans of names nobody listed that NER misses in chat (see the module docstring); one span per word."""
    if _triggers().isdisjoint(_WORD_RE.findall(text.lower())):  # most messages: one C-level set test
        return []
    words = list(_WORD_RE.finditer(text))
    lows = [m.group().lower() for m in words]  # aligned with `words` (lowercasing can change a word's length)
    given, family = other_names()
    en_common = common_words(False)
    vi_common = common_words(True)
    out: dict[int, Span] = {}
    n = len(words)
    i = 0
    while i < n:
        low = lows[i]
        # A Vietnamese full name in any casing: a family name and one to three name syllables ("nguyễn văn hùng").
        if low in VI_FAMILY or low in _VI_FAMILY_FOLDED:
            folded = low.isascii()
            j = i + 1
            while j < n and j - i <= 3 and _adjacent(text, words[j - 1], words[j]) and \
                    (lows[j] in _VI_SYLLABLES_FOLDED if folded else lows[j] in VI_SYLLABLES):
                j += 1
            need = 2 if (low in _VI_FAMILY_AMBIGUOUS or (folded and low not in _VI_FAMILY_FOLDED_SAFE)) else 1
            if j - i - 1 >= need and " ".join(lows[i:j]) not in _VI_NOT_NAMES and \
                    " ".join(lows[i:i + 2]) not in _VI_NOT_NAMES and " ".join(lows[i:i + 3]) not in _VI_NOT_NAMES:
                for k in range(i, j):
                    role = "last" if k == i else "first" if k == j - 1 else "middle"
                    out[words[k].start()] = (words[k].start(), words[k].end(), role, True)
                i = j
                continue
        i += 1
    given_lower = _given_lower()
    # Only words a rule below can take: before "ơi", after a cue or greeting, a known given name, after a name.
    todo = sorted({i for i, w in enumerate(lows) if w in given_lower}
                  | {i - 1 for i, w in enumerate(lows) if i and w in ("ơi", "oi")}
                  | {i + 1 for i, w in enumerate(lows[:-1]) if w in _VI_CUE or w in _GREETINGS}
                  | {i + 1 for i in range(n - 1) if words[i].start() in out})
    for i in todo:
        m = words[i]
        if m.start() in out:
            continue
        word, low = m.group(), lows[i]
        prv = lows[i - 1] if i and _adjacent(text, words[i - 1], m) else ""
        nxt = lows[i + 1] if i + 1 < n and _adjacent(text, m, words[i + 1]) else ""
        if is_chat_noise(word) or low.isdigit():
            continue
        # "X ơi": whoever is called is a name or a nickname, unless X is kinship, a pronoun or "trời".
        if nxt in ("ơi", "oi") and low not in _VI_NOT_VOCATIVE and strip_diacritics(low) not in _VI_NOT_VOCATIVE \
                and len(low) > 1:
            vi = has_vi_letters(word) or is_vi_name_syllable(word)
            out[m.start()] = (m.start(), m.end(), "first", vi)
            if prv == low:  # reduplicated nicknames: "tin tin ơi", "bon bon ơi"
                out[words[i - 1].start()] = (words[i - 1].start(), words[i - 1].end(), "first", vi)
            continue
        # A lowercase Vietnamese given name after a person cue ("anh tuấn", "tên là linh"), no compound word.
        if word.islower() and prv in _VI_CUE and (low in VI_SYLLABLES or (low.isascii() and low in _VI_SYLLABLES_FOLDED
                                                                          and strip_diacritics(prv) == prv)):
            if (prv != "là" or (i > 1 and lows[i - 2] == "tên")) and f"{prv} {low}" not in _VI_COMPOUNDS and \
                    f"{low} {nxt}" not in _VI_COMPOUNDS and low not in vi_common:
                out[m.start()] = (m.start(), m.end(), "first", True)
                continue
        title = word[:1].upper() + word[1:].lower()
        # English given names nobody listed, lowercase or all caps ("met sarah", "SARAH said no"); a rare
        # family name right after one ("jessica miller").
        if (word.islower() or (word.isupper() and len(word) > 2)) and title in given:
            out[m.start()] = (m.start(), m.end(), "first", False)
            continue
        if (word.islower() or word.isupper()) and title in family and i and words[i - 1].start() in out and prv:
            out[m.start()] = (m.start(), m.end(), "last", False)
            continue
        # A nickname after a greeting ("hey tommy", "thanks jojo"): lowercase, no everyday or chat word.
        if word.islower() and prv in _GREETINGS and (low in _NICKNAMES or (len(low) > 1 and low not in en_common
                                                                           and low not in vi_common)):
            out[m.start()] = (m.start(), m.end(), "first", False)
    return sorted(out.values())


@functools.lru_cache(maxsize=1)
def _triggers() -> frozenset[str]:
    """Lowercase words without one of which `find_name_spans` finds nothing."""
    return frozenset(VI_FAMILY | _VI_FAMILY_FOLDED | {"ơi", "oi"} | _VI_CUE | _GREETINGS | _given_lower())


@functools.lru_cache(maxsize=1)
def _given_lower() -> frozenset[str]:
    """The English given names of `other_names`, lowercase."""
    return frozenset(n.lower() for n in other_names()[0])


def _adjacent(text: str, a: re.Match, b: re.Match) -> bool:
    """Two words separated by spaces only (a comma or a full stop ends a name)."""
    return text[a.end():b.start()].strip(" ") == "" and b.start() - a.end() <= 2
