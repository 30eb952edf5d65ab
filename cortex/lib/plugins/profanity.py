"""Profanity Filter: flags chat lines with swear words (``profanity`` annotations), optionally sanctioning.

Detection uses the `better-profanity` library: its word list (about 900 entries, some of several words such as
"blow job"), its character substitutions (``CHARS_MAPPING``: ``a → @ * 4``, ``i → * l 1``, ``o → * 0 @``,
``u → * v``, ``v → * u``, ``l → 1``, ``e → * 3``, ``s → $ 5``, ``t → 7``) so "sh1t", "f*ck" and "a$$" match,
its word characters (letters, digits, ``@ $ * ' "``) and its multi-word rule (a word joined with up to the next
few words, with or without what separates them, so "f u c k", "f.u.c.k" and "bull shit" match).

``Profanity.censor`` compares every word of a line with each of the ~900 entries in Python (~15 ms a line), too
slow for a filter that sees every message. So the library builds the word set (default list + ``customWords``,
minus ``allowWords``, as ``Profanity.load_censor_words(..., whitelist_words=...)`` does) and this module compiles
it into a trie whose edges are the library's substitutions: walking a word through the trie accepts exactly
what the library's ``VaryingString`` comparison accepts, in microseconds. Compiled detectors are cached per
``(customWords, allowWords)`` (an LRU of 64, plus the shared default one).

Beyond the library: quotes around a word are ignored ("'shit'" matches), and a match whose text (lowercased) is
in ``allowWords`` is never flagged.

``on_message`` returns ``None`` for a clean line, else ``{"isProfane": True, "words": [...], "count": n,
"censored": "..."}``: ``words`` are the distinct matches as written, lowercased, in order; ``count`` counts every
match; ``censored`` is the line with each match replaced by ``****`` (the library's replacement).

Settings drive the auto-sanction done by the models layer: with ``autoSanction`` on, ``threshold`` profane lines
of one player within ``windowMinutes`` record a ``sanctionType`` sanction lasting ``durationMinutes`` (0 =
permanent).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from better_profanity import Profanity
from better_profanity.constants import ALLOWED_CHARACTERS
from better_profanity.utils import get_complete_path_of_file, get_replacement_for_swear_word, read_wordlist

from .base import PluginDefinition, SettingField

__all__ = ["PLUGIN", "SANCTION_TYPES", "Detector", "detector", "on_message"]

#: Sanction types an automatic sanction may take (a subset of ``models.sanctions.TYPES``).
SANCTION_TYPES = ("warn", "mute", "listen_only", "shadow_mute", "text_only", "temp_ban", "perm_ban")

_QUOTES = "'\""
_REPLACEMENT = get_replacement_for_swear_word("*")


def _char_class(chars: Iterable[str]) -> str:
    """A regex character class of ``chars``, as ranges of code points."""
    points = sorted(ord(c) for c in chars)
    parts: list[str] = []
    start = prev = points[0]
    for p in [*points[1:], -2]:
        if p == prev + 1:
            prev = p
            continue
        parts.append(re.escape(chr(start)) if start == prev else f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
        start = prev = p
    return "[" + "".join(parts) + "]+"


_WORD = re.compile(_char_class(ALLOWED_CHARACTERS))


class _Node:
    __slots__ = ("end", "kids", "next")

    def __init__(self) -> None:
        self.kids: dict[str, _Node] = {}  # by the entry's own character (shared prefixes)
        self.next: dict[str, list[_Node]] = {}  # by every character the library accepts for it
        self.end = False


def _walk(nodes: list[_Node], text: str) -> list[_Node]:
    for ch in text:
        following: list[_Node] = []
        for node in nodes:
            kids = node.next.get(ch)
            if kids:
                following.extend(kids)
        if not following:
            return following
        nodes = following
    return nodes


def _ends(nodes: list[_Node]) -> bool:
    return any(node.end for node in nodes)


class Detector:
    """A compiled better-profanity word set (see the module docstring). Immutable, safe to share."""

    def __init__(self, custom_words: Iterable[str] = (), allow_words: Iterable[str] = ()) -> None:
        self.allow = frozenset(w.strip().lower() for w in allow_words if w.strip())
        words = [*read_wordlist(get_complete_path_of_file("profanity_wordlist.txt"))]
        words += [w.strip().lower() for w in custom_words if w.strip()]
        library = Profanity(words)
        if self.allow:
            library.load_censor_words(words, whitelist_words=list(self.allow))
        self.root = _Node()
        self.max_combinations = 1
        for entry in library.CENSOR_WORDSET:
            self._add(str(entry), library.CHARS_MAPPING)

    def _add(self, word: str, char_map: dict[str, tuple[str, ...]]) -> None:
        separators = sum(1 for c in word if c not in ALLOWED_CHARACTERS)
        self.max_combinations = max(self.max_combinations, separators)
        node = self.root
        for c in word:
            kid = node.kids.get(c)
            if kid is None:
                kid = node.kids[c] = _Node()
                for variant in char_map.get(c, (c,)):
                    node.next.setdefault(variant, []).append(kid)
            node = kid
        node.end = True

    def find(self, text: str) -> list[tuple[int, int]]:
        """The (start, end) spans of the matches in ``text``, in order, not overlapping."""
        words: list[tuple[int, int, str]] = []
        for m in _WORD.finditer(text):
            start, end = m.span()
            while start < end and text[start] in _QUOTES:
                start += 1
            while end > start and text[end - 1] in _QUOTES:
                end -= 1
            if start < end:
                words.append((start, end, text[start:end].lower()))
        spans: list[tuple[int, int]] = []
        root = [self.root]
        i, n = 0, len(words)
        while i < n:
            start, end, word = words[i]
            joined = with_separators = _walk(root, word)
            single = _ends(joined)
            last = -1
            j = i
            # The library's multi-word rule: this word joined with the next ones, the shortest match first.
            while (joined or with_separators) and j + 1 < n and j - i < self.max_combinations:
                j += 1
                gap = text[words[j - 1][1] : words[j][0]].lower()
                following = words[j][2]
                joined = _walk(joined, following) if joined else joined
                with_separators = _walk(_walk(with_separators, gap), following) if with_separators else []
                if _ends(joined) or _ends(with_separators):
                    last = j
                    break
            if last < 0 and single:
                last = i
            if last >= 0 and text[start : words[last][1]].lower() not in self.allow:
                spans.append((start, words[last][1]))
                i = last + 1
            else:
                i += 1
        return spans

    def analyze(self, text: str) -> dict | None:
        spans = self.find(text)
        if not spans:
            return None
        found: list[str] = []
        parts: list[str] = []
        position = 0
        for start, end in spans:
            word = text[start:end].lower()
            if word not in found:
                found.append(word)
            parts += [text[position:start], _REPLACEMENT]
            position = end
        parts.append(text[position:])
        return {"isProfane": True, "words": found, "count": len(spans), "censored": "".join(parts)}


@functools.cache
def _default_detector() -> Detector:
    return Detector()


@functools.lru_cache(maxsize=64)
def _custom_detector(custom_words: tuple[str, ...], allow_words: tuple[str, ...]) -> Detector:
    return Detector(custom_words, allow_words)


def _key(words: object) -> tuple[str, ...]:
    if not isinstance(words, list | tuple):
        return ()
    return tuple(sorted({w.strip().lower() for w in words if isinstance(w, str) and w.strip()}))


def detector(custom_words: Iterable[str] = (), allow_words: Iterable[str] = ()) -> Detector:
    """The (cached) detector for these word lists."""
    custom, allow = _key(list(custom_words)), _key(list(allow_words))
    if not custom and not allow:
        return _default_detector()
    return _custom_detector(custom, allow)


def on_message(text: str, settings: dict) -> dict | None:
    if not text:
        return None
    return detector(settings.get("customWords") or (), settings.get("allowWords") or ()).analyze(text)


PLUGIN = PluginDefinition(
    id="384f36ba-aaef-4c60-b074-1b6f4ea6ee53",
    slug="profanity-filter",
    name="Profanity Filter",
    description=(
        "Flags chat messages that contain profanity, including obfuscated spellings such as \"sh1t\" or "
        "\"f*ck\", and can sanction players automatically after repeated offences."
    ),
    version="1.0.0",
    category="moderation",
    events=("message.created",),
    annotation_type="profanity",
    icon="heroicons_outline:shield-check",
    settings=(
        SettingField(
            "autoSanction", "boolean", "Automatic sanction", default=False,
            description="Sanction a player automatically after `threshold` profane messages within the window.",
        ),
        SettingField(
            "sanctionType", "select", "Sanction type", default="mute", options=SANCTION_TYPES,
            description="The sanction recorded automatically.",
        ),
        SettingField(
            "threshold", "number", "Threshold", default=3, minimum=1, maximum=100,
            description="Profane messages within the window that trigger the sanction.",
        ),
        SettingField(
            "windowMinutes", "number", "Window (minutes)", default=60, minimum=1, maximum=10080,
            description="How far back profane messages count towards the threshold.",
        ),
        SettingField(
            "durationMinutes", "number", "Sanction duration (minutes)", default=60, minimum=0, maximum=525600,
            description="How long the automatic sanction lasts; 0 = permanent.",
        ),
        SettingField(
            "customWords", "chips", "Additional words", default=(),
            description="Extra words to flag (their look-alike spellings are flagged too).",
        ),
        SettingField(
            "allowWords", "chips", "Allowed words", default=(),
            description="Words never flagged, even when the built-in list contains them.",
        ),
    ),
    on_message=on_message,
)
