"""Action Items: an ``action_items`` annotation when a session ends — who committed to or was asked to do what.

The method (rule based, English, no model; this docstring is its documentation):

1. Every line is cut into sentences (:func:`~cortex.lib.plugins.base.split_sentences`), and a sentence into
   clauses where a comma or semicolon (and "but", "and", "so", "then", "or") comes before "I", "I'll", "I'm",
   "we", "we'll", "let's" or "let me" ("I won't present, but I can prepare the demo"); curly apostrophes count
   as straight ones. Leading discourse words are dropped first ("ok", "so", "and", "also", "then", "sure",
   "yes", "yeah", "well", "great", "alright", "actually", "by the way", … each with an optional comma).
2. A sentence is an item when it starts (after those words) with one of these forms, tried in this order:

   - **Marked**: ``TODO``/``to-do`` (then ``:``, ``-`` or a space), ``action item(s):``, ``next step(s):`` or
     ``follow-up:``. Who: a participant named at the start of the rest ("TODO: Bob to send the deck",
     "Action item: @Bob, send the deck"), the speaker when the rest is a commitment ("TODO: I'll …"), else
     ``unassigned``.
   - **Addressed** ("Bob, …", "Bob: …", "@bob …"): a lead of at most six words before a comma or colon, or an
     @mention, followed by one of the forms below. The lead names who a request is for: a participant (full
     name or unique first name, any case; their full name is used), ``team`` for "everyone", "team", "folks",
     "guys", "all", or a capitalised name of one to three words that is not a common sentence opener
     ("Tomorrow", "Honestly", "Note", …; those leads are just dropped). When the rest matches no form, the
     sentence is read again as a whole ("Could you review my PR, Bob?").
   - **Request**: "can/could/would/will you (please) …", "please …", "would you mind …", "I need you to …",
     "I'd like you to …". Who: the addressed name, else the first other participant named in the sentence
     (full name or unique first name, case-insensitive), else ``unassigned``.
   - **Commitment**: "I will", "I'll", "I shall", "I'm going to", "I am going to", "I'm gonna", "I can",
     "let me", "I need to", "I have to", "I must", "I'll need/have to" (so "I'll take care of …" too). Who: the
     speaker.
   - **Group task**: "we need to", "we have to", "we should", "we must", "we've got to", "we gotta", "we ought
     to", "we'll need/have to", "let's", "let us". Who: ``team``.

3. Not items: questions (ending in "?") other than requests ("I will?", "Should we …?", "What will we …?");
   negations (the task starting with "not"/"never" — "I will not", "let's not", "please don't", "can you not" —
   or a negative lead-in — "I won't", "I can't", "we don't need to", "we shouldn't" —, which no form matches);
   forms followed by what is not a task: perception and opinion verbs and "be" ("I can see", "can you hear me",
   "let me know", "let me think", "let's see", "I'll be late"), meeting flow after a group form ("let's move
   on", "let's get started", "we need to talk about …", "let's go with …"), leaving ("I have to go", "we need to
   leave now, bye") and "going to" + an article or place ("I'm going to the office").
4. ``what`` is the rest after the lead-in, cleaned: filler adverbs at its start dropped ("just", "also",
   "quickly", "probably", "go ahead and", …), a trailing "please"/"thanks" or ", <addressed name>" dropped,
   white space collapsed, trailing punctuation removed, the first letter upper-cased, at most 300 characters.
   An empty task is no item; the same (who, what) pair is kept once (the first).

Data: ``{"items": [{"who", "what", "messageId", "speaker"}], "count": n}``, at most ``maxItems`` items in
transcript order. A transcript without items still gets the annotation (an empty list: "no action items"); an
empty transcript gets none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .base import Line, PluginDefinition, SessionContext, SettingField, split_sentences

__all__ = ["PLUGIN", "TEAM", "UNASSIGNED", "extract", "on_session_end"]

TEAM = "team"
UNASSIGNED = "unassigned"
MAX_WHAT = 300
DEFAULT_MAX_ITEMS = 50

_I = re.IGNORECASE

_FILLER = re.compile(
    r"^(?:(?:ok(?:ay)?|so|and|also|then|alright|all right|right|sure(?: thing)?|yes|yeah|yep|yup|well|great|"
    r"good|fine|cool|perfect|thanks|thank you|oh|um+|uh+|hm+|anyway|actually|besides|plus|btw|by the way|"
    r"in that case|one more thing|finally|lastly|first|second|next)\b[,.!:;-]*\s+)+",
    _I,
)
_MARKER = re.compile(
    r"^(?:(?:todo|to-do)\b[\s:–—-]*|(?:action items?|next steps?|follow[- ]?up)\s*:\s*)(?P<rest>.+)$", _I
)
_VOCATIVE = re.compile(r"^@?(?P<name>[^\s,:@][^,:]{0,60}?)\s*[,:]\s+(?P<rest>\S.*)$", re.DOTALL)
_NAME = re.compile(r"[A-Z][\w'.-]*")
_GROUP_NAMES = frozenset("everyone everybody team folks guys all people y'all".split())
_NOT_NAMES = frozenset(
    "ok okay so and also then alright right sure yes yeah yep yup well great good fine cool perfect thanks oh um "
    "uh hmm anyway actually besides plus btw hey hi hello please no nope i we you it this that there here if when "
    "once since because as but or in for after before now later today tomorrow tonight yesterday morning "
    "afternoon evening monday tuesday wednesday thursday friday saturday sunday meanwhile otherwise however "
    "instead therefore first second third next finally again note update reminder question fyi heads "
    "important agreed done".split()
)
_REQUEST = re.compile(
    r"^(?:would\s+you\s+mind\s+|(?:can|could|would|will)\s+(?:you|u)\s+(?:please\s+)?|please\s+|"
    r"i\s+need\s+you\s+to\s+|(?:i'd|i\s+would)\s+like\s+you\s+to\s+)(?P<rest>.+)$",
    _I,
)
_COMMITMENT = re.compile(
    r"^(?:i(?:'ll|\s+will)\s+(?:need|have)\s+to|i\s+will|i'll|i\s+shall|i'm\s+going\s+to|i\s+am\s+going\s+to|"
    r"i'm\s+gonna|i\s+am\s+gonna|i\s+can|let\s+me|i\s+need\s+to|i\s+have\s+to|i\s+must)\s+(?P<rest>.+)$",
    _I,
)
_GROUP = re.compile(
    r"^(?:we\s+need\s+to|we\s+have\s+to|we\s+should|we\s+must|we've\s+got\s+to|we\s+have\s+got\s+to|"
    r"we\s+got\s+to|we\s+gotta|we\s+ought\s+to|we(?:'ll|\s+will)\s+(?:need|have)\s+to|let's|let\s+us)\s+"
    r"(?P<rest>.+)$",
    _I,
)
_CLAUSE = re.compile(r"\s*[,;]\s+(?:(?:but|and|so|then|or)\s+)?(?=(?:i|i'll|i'm|we|we'll|let's|let\s+me)\b)", _I)
_AT_MENTION = re.compile(r"^@(?P<name>[\w.'-]+)[,:]?\s+(?P<rest>\S.*)$", re.DOTALL)
_NEGATED = re.compile(r"^(?:i|we)\s+(?:won't|will\s+not|can't|cannot|shouldn't|don't|do\s+not)\b|^let's\s+not\b", _I)
_NEGATION = re.compile(r"^(?:not|never|n't|don't|do\s+not)\b", _I)
_NON_TASK = re.compile(
    r"^(?:be|see|hear|understand|imagine|agree|say|think|believe|feel|guess|hope|know|recall|remember|"
    r"like|wonder|assume|suppose|tell\s+you|ask\s+you)\b",
    _I,
)
_FLOW = re.compile(
    r"^(?:move\s+on|get\s+started|start|begin|continue|talk|discuss|recap|wrap\s+up|keep\s+going|go)\b"
    r"(?:\s*[.!]*\s*$|\s+(?:about|with|to|on|now|then|the\s+meeting|the\s+call))",
    _I,
)
_LEAVING = re.compile(
    r"^(?:go|leave|run|drop\s+off|hop\s+off|head\s+out|sign\s+off)"
    r"(?:\s+(?:now|soon|early|today|already|sorry|guys|folks|everyone))*[\s.!,]*(?:bye\b.*)?$",
    _I,
)
_GOING_TO_PLACE = re.compile(
    r"^(?:the|a|an|my|your|our|his|her|their|this|that|these|those|some|lunch|bed|work|school|class|sleep|"
    r"church|home)\b",
    _I,
)
_LEADING_FILLER = re.compile(
    r"^(?:(?:just|also|then|quickly|probably|definitely|certainly|surely|gladly|happily|really|actually|"
    r"still|maybe|go\s+ahead\s+and|please|kindly|try\s+and)\s+)+",
    _I,
)
_TRAILING = re.compile(r"(?:[\s,]+(?:please|thanks|thank\s+you|thx|ok|okay)\b)?[\s.!?;:,…]*$", _I)
_AT_START = re.compile(r"^@?(?P<name>[\w'.-]+(?:\s+[\w'.-]+){0,2}?)(?:\s*[:,]\s+|\s+(?:to|will|should|needs?\s+to|must)\s+)")


class _People:
    """The transcript's participants and how to find them in text."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = [n for n in dict.fromkeys(names) if n.strip()]
        self.by_key: dict[str, str] = {}
        first_names: dict[str, list[str]] = {}
        for name in self.names:
            self.by_key[name.lower()] = name
            first = name.split()[0].lower()
            first_names.setdefault(first, []).append(name)
        for first, owners in first_names.items():
            if len(owners) == 1:
                self.by_key.setdefault(first, owners[0])
        keys = sorted(self.by_key, key=len, reverse=True)
        self.pattern = (
            re.compile(r"(?<![\w@])@?(" + "|".join(re.escape(k) for k in keys) + r")(?!\w)", _I) if keys else None
        )

    def lookup(self, text: str) -> str | None:
        return self.by_key.get(text.strip().lstrip("@").lower())

    def mentioned(self, text: str, besides: str) -> str | None:
        """The first participant other than ``besides`` named in ``text``."""
        if self.pattern is None:
            return None
        for m in self.pattern.finditer(text):
            name = self.by_key[m.group(1).lower()]
            if name != besides:
                return name
        return None


def _clean(what: str, addressed: str | None = None) -> str:
    what = " ".join(what.split())
    what = _LEADING_FILLER.sub("", what)
    if addressed:
        first = re.escape(addressed.split()[0])
        what = re.sub(rf",\s*@?(?:{re.escape(addressed)}|{first})\s*[.!?]*$", "", what, flags=_I)
    what = _TRAILING.sub("", what)
    what = what.strip()
    if len(what) > MAX_WHAT:
        what = what[: MAX_WHAT - 1].rstrip() + "…"
    return what[:1].upper() + what[1:]


def _task(rest: str, *, group: bool = False, going_to: bool = False) -> str | None:
    """The task clause after a lead-in, or None when it is a negation or not a task."""
    rest = rest.strip()
    if _NEGATION.match(rest):
        return None
    core = _LEADING_FILLER.sub("", rest)
    if _NEGATION.match(core) or _NON_TASK.match(core):
        return None
    if _LEAVING.match(core) or (group and _FLOW.match(core)):
        return None
    if going_to and _GOING_TO_PLACE.match(core):
        return None
    return rest


def _commitment(text: str) -> str | None:
    m = _COMMITMENT.match(text)
    if m is None:
        return None
    lead = text[: m.start("rest")].lower()
    return _task(m.group("rest"), going_to="going to" in lead or "gonna" in lead)


def _addressee(name: str, people: _People) -> str | None:
    """Who "Name, …" addresses: a participant, ``team`` for "everyone, …", a capitalised name, or None."""
    name = name.strip()
    if name.lower() in _GROUP_NAMES:
        return TEAM
    found = people.lookup(name)
    if found is not None:
        return found
    words = name.split()
    if not 1 <= len(words) <= 3 or not all(_NAME.fullmatch(w) for w in words):
        return None
    first = words[0].lower()
    return None if first in _NOT_NAMES or first.endswith("ly") else name


_NO_FORM = ("", "")  # no form matched (another reading of the sentence may match); None = not an item


def _forms(text: str, speaker: str, people: _People, addressed: str | None) -> tuple[str, str] | None:
    """(who, what) when ``text`` is a request, commitment or group task; None when it is one of those forms but
    not an item (negation, not a task); ``_NO_FORM`` otherwise."""
    request = _REQUEST.match(text)
    if request:
        task = _task(request.group("rest"))
        if task is None:
            return None
        who = addressed or people.mentioned(text, besides=speaker) or UNASSIGNED
        return who, _clean(task, None if who in (TEAM, UNASSIGNED) else who)
    if text.endswith("?"):
        return _NO_FORM
    committed = _commitment(text)
    if committed is not None:
        return speaker, _clean(committed, addressed if addressed not in (None, TEAM) else None)
    group = _GROUP.match(text)
    if group:
        task = _task(group.group("rest"), group=True)
        return (TEAM, _clean(task)) if task is not None else None
    if _COMMITMENT.match(text) or _NEGATED.match(text):
        return None
    return _NO_FORM


def _marked(rest: str, speaker: str, people: _People) -> tuple[str, str]:
    rest = _FILLER.sub("", rest).strip()
    committed = _commitment(rest)
    if committed is not None:
        return speaker, _clean(committed)
    at = _AT_START.match(rest)
    who = people.lookup(at.group("name")) if at else None
    if at and who:
        return who, _clean(rest[at.end() :])
    return UNASSIGNED, _clean(rest)


def _sentence_item(sentence: str, speaker: str, people: _People) -> tuple[str, str] | None:
    """(who, what) for one sentence, or None."""
    raw = sentence.strip().replace("’", "'").replace("‘", "'")
    text = _FILLER.sub("", raw).strip()
    for candidate in (raw, text):
        marked = _MARKER.match(candidate)
        if marked:
            return _marked(marked.group("rest"), speaker, people)
    if not text:
        return None
    # Readings, tried in order: "@name …", "Name, …" (or another short lead before a comma), the sentence as is.
    readings: list[tuple[str | None, str]] = []
    for pattern in (_AT_MENTION, _VOCATIVE):
        m = pattern.match(text)
        if m and len(m.group("name").split()) <= 6:
            readings.append((_addressee(m.group("name"), people), _FILLER.sub("", m.group("rest")).strip()))
    readings.append((None, text))
    for addressed, reading in readings:
        found = _forms(reading, speaker, people, addressed)
        if found is not _NO_FORM:
            return found
    return None


def extract(lines: Sequence[Line], max_items: int = DEFAULT_MAX_ITEMS) -> list[dict]:
    """The action items of a transcript, in order (see the module docstring)."""
    people = _People([line.sender_name for line in lines])
    items: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for line in lines:
        clauses = [c for s in split_sentences(line.content.replace("’", "'")) for c in _CLAUSE.split(s)]
        for clause in clauses:
            found = _sentence_item(clause, line.sender_name, people)
            if found is None or not found[1]:
                continue
            who, what = found
            if (who, what.lower()) in seen:
                continue
            seen.add((who, what.lower()))
            items.append({"who": who, "what": what, "messageId": line.message_id, "speaker": line.sender_name})
            if len(items) >= max_items:
                return items
    return items


def on_session_end(lines: list[Line], settings: dict, ctx: SessionContext) -> dict | None:
    if not any(line.content.strip() for line in lines):
        return None
    items = extract(lines, int(settings.get("maxItems") or DEFAULT_MAX_ITEMS))
    return {"items": items, "count": len(items)}


PLUGIN = PluginDefinition(
    id="fad97f2a-4658-424a-ac2a-228988db7847",
    slug="action-items",
    name="Action Items",
    description=(
        "Extracts action items from a session's chat when it ends: commitments (\"I'll send the deck\"), "
        "requests (\"Bob, can you check the logs?\"), team tasks (\"we need to…\") and TODOs, with who and what."
    ),
    version="1.0.0",
    category="automation",
    events=("session.ended",),
    annotation_type="action_items",
    icon="heroicons_outline:clipboard-document-check",
    settings=(
        SettingField(
            "maxItems", "number", "Maximum items", default=DEFAULT_MAX_ITEMS, minimum=1, maximum=200,
            description="At most this many action items per session.",
        ),
    ),
    on_session_end=on_session_end,
)
