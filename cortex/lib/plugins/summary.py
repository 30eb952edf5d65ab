"""Session Summary: a ``summary`` annotation when a session ends, and the Markdown minutes of a session.

Two providers (setting ``provider``):

- ``extractive`` (default, offline): LexRank (`sumy`'s ``LexRankSummarizer`` with sumy's English stop words and
  Snowball ``Stemmer``) picks the ``sentences`` most central sentences of the transcript. The sumy document is
  built here from the transcript lines — each line split into sentences and words by :class:`Tokenizer`, a
  small regex tokenizer — so NLTK's punkt data is never needed and nothing is fetched at run time. Work is
  capped: the last :data:`MAX_LINES` lines, at most ``MAX_SENTENCES`` (2000) sentences; sumy's pure-Python
  similarity matrix (quadratic, ~18 s for 2000 lines) is computed with numpy instead (``_lexrank.LexRank``,
  same formulas). Sentences with nothing but stop words and repeated sentences are left out. A transcript of at most
  ``sentences`` lines is returned whole. The summary keeps transcript order, one sentence a line, each prefixed
  with its speaker ("Alice: …").
- ``openai-compatible``: the transcript ("Name: text" lines, at most :data:`MAX_PROMPT_CHARS` characters, the
  end kept) goes to ``{baseUrl}/chat/completions`` (``model``, bearer ``apiKey``) through the server's outbound
  client (``ctx.post_json``); the answer's ``choices[0].message.content`` is the summary. ``baseUrl`` and
  ``apiKey`` are required with this provider (:func:`check`).

Data: ``{"summary", "provider", "messageCount", "participants"}`` (participants: distinct speaker names in order
of first appearance); an empty transcript gets no annotation.

:func:`render_minutes` writes a session's minutes (the plugin's "Generate Minutes" action) as Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from .base import (
    Action,
    Line,
    PluginDefinition,
    PluginError,
    SessionContext,
    SettingField,
    SettingsError,
    split_sentences,
)

__all__ = [
    "EXTRACTIVE",
    "MAX_LINES",
    "MAX_PROMPT_CHARS",
    "OPENAI_COMPATIBLE",
    "PLUGIN",
    "Tokenizer",
    "check",
    "extractive_summary",
    "on_session_end",
    "participants",
    "render_minutes",
]

EXTRACTIVE = "extractive"
OPENAI_COMPATIBLE = "openai-compatible"
DEFAULT_MODEL = "gpt-4o-mini"
MAX_LINES = 2000
MAX_PROMPT_CHARS = 60_000
MAX_SUMMARY_CHARS = 20_000
LLM_TIMEOUT = 60.0
LANGUAGE = "english"

SYSTEM_PROMPT = (
    "You summarise the chat transcript of a meeting or gaming session. Each transcript line is 'Speaker: text'. "
    "Write a concise summary (at most a few short paragraphs or bullet points) of the topics discussed, the "
    "decisions made and the open questions, naming who said what where it matters. Use only what the "
    "transcript says. Answer in the language of the transcript, with the summary only."
)

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


class Tokenizer:
    """The sentence and word tokenizer sumy's document model asks for (``to_sentences`` / ``to_words``):
    regular expressions, no NLTK data. Sentences as :func:`~cortex.lib.plugins.base.split_sentences` cuts them;
    words are runs of letters and digits (with inner apostrophes)."""

    language = LANGUAGE

    def to_sentences(self, paragraph: str) -> tuple[str, ...]:
        return tuple(split_sentences(paragraph))

    def to_words(self, sentence: str) -> tuple[str, ...]:
        return tuple(_WORD.findall(sentence))


TOKENIZER = Tokenizer()


def participants(lines: Sequence[Line]) -> list[str]:
    """Distinct speaker names, in order of first appearance."""
    return list(dict.fromkeys(line.sender_name for line in lines))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def extractive_summary(lines: Sequence[Line], sentences: int = 5) -> str:
    """The ``sentences`` most central sentences (LexRank), in transcript order, each "Speaker: sentence"."""
    recent = [line for line in lines[-MAX_LINES:] if line.content.strip()]
    if len(recent) <= sentences:
        return "\n".join(f"{line.sender_name}: {_one_line(line.content)}" for line in recent)
    from . import _lexrank  # sumy, NLTK's stemmer and numpy load on first use (~0.3 s), not at import

    picked = _lexrank.pick([(line.sender_name, line.content) for line in recent], sentences, TOKENIZER)
    return "\n".join(f"{speaker}: {_one_line(text)}" for speaker, text in picked)


def transcript_text(lines: Sequence[Line], limit: int = MAX_PROMPT_CHARS) -> str:
    """The transcript as "Name: text" lines, at most ``limit`` characters, keeping the end."""
    out: list[str] = []
    size = 0
    for line in reversed(lines):
        text = f"{line.sender_name}: {_one_line(line.content)}"
        if size + len(text) + 1 > limit:
            if not out:
                out.append(text[-limit:])
            break
        out.append(text)
        size += len(text) + 1
    return "\n".join(reversed(out))


def _llm_summary(lines: Sequence[Line], settings: dict, ctx: SessionContext) -> str:
    base_url = str(settings.get("baseUrl") or "").rstrip("/")
    api_key = settings.get("apiKey")
    if not base_url or not api_key:
        raise PluginError("the openai-compatible provider needs baseUrl and apiKey")
    body = {
        "model": settings.get("model") or DEFAULT_MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": transcript_text(lines)},
        ],
        "temperature": 0.2,
    }
    answer = ctx.post_json(f"{base_url}/chat/completions", body, {"Authorization": f"Bearer {api_key}"},
                           timeout=LLM_TIMEOUT)
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str) or not content.strip():
        raise PluginError("the summary provider's answer has no choices[0].message.content text")
    return content.strip()[:MAX_SUMMARY_CHARS]


def on_session_end(lines: list[Line], settings: dict, ctx: SessionContext) -> dict | None:
    if not any(line.content.strip() for line in lines):
        return None
    provider = settings.get("provider") or EXTRACTIVE
    if provider == OPENAI_COMPATIBLE:
        text = _llm_summary(lines, settings, ctx)
    else:
        text = extractive_summary(lines, int(settings.get("sentences") or 5))
    return {
        "summary": text,
        "provider": provider,
        "messageCount": len(lines),
        "participants": participants(lines),
    }


def check(settings: dict) -> None:
    """``baseUrl`` and ``apiKey`` are required with the openai-compatible provider."""
    if settings.get("provider") == OPENAI_COMPATIBLE:
        for key in ("baseUrl", "apiKey"):
            if not settings.get(key):
                raise SettingsError(key, f"is required when provider is {OPENAI_COMPATIBLE}")


# ---------------------------------------------------------------------------------------------------- minutes

_INLINE = re.compile(r"([\\`*_\[\]<>])")
_BLOCK_START = re.compile(r"^(#|>|[-+=]|\d+[.)])")


def _inline(text: str) -> str:
    """User text for inside a Markdown line: one line, emphasis, code, link and HTML characters escaped."""
    return _INLINE.sub(r"\\\1", _one_line(text))


def _block_line(text: str) -> str:
    """User text that starts a Markdown line: also no heading, quote, list or setext underline."""
    return _BLOCK_START.sub(r"\\\1", _inline(text))


def _date(value: datetime) -> str:
    out = value.strftime("%Y-%m-%d %H:%M")
    zone = value.tzname() if value.tzinfo is not None else None
    return f"{out} {zone}" if zone else out


def render_minutes(
    title: str,
    date: datetime,
    participants: list[str],
    summary: str | None,
    action_items: list[dict] | None,
    lines: list[Line],
) -> str:
    """A session's minutes as Markdown: title, date, participants, summary, action items, transcript.

    User text is escaped so that it cannot start headings, quotes or lists, nor add emphasis, links or HTML."""
    out = [f"# Minutes: {_inline(title)}", "", f"**Date:** {_date(date)}", "", "## Participants", ""]
    out += [f"- {_inline(name)}" for name in participants] or ["_None recorded._"]
    out += ["", "## Summary", ""]
    summary_lines = [line for line in (summary or "").splitlines() if line.strip()]
    out += [_block_line(line) for line in summary_lines] or ["_No summary available._"]
    out += ["", "## Action items", ""]
    items = [
        f"- **{_inline(str(item.get('who') or 'unassigned'))}**: {_inline(str(item.get('what') or ''))}"
        for item in action_items or ()
        if isinstance(item, dict)
    ]
    out += items or ["_None recorded._"]
    out += ["", "## Transcript", ""]
    out += [
        f"- `{line.timestamp.strftime('%H:%M:%S')}` **{_inline(line.sender_name)}**: {_inline(line.content)}"
        for line in lines
    ] or ["_No messages._"]
    return "\n".join(out) + "\n"


PLUGIN = PluginDefinition(
    id="8e6388a0-5deb-4f2a-b93e-3b9ee47ef2ea",
    slug="session-summary",
    name="Session Summary",
    description=(
        "Summarises a session's chat when it ends — offline with an extractive summary (LexRank) or with an "
        "OpenAI-compatible language model — and generates Markdown minutes on demand."
    ),
    version="1.0.0",
    category="analytics",
    events=("session.ended",),
    annotation_type="summary",
    icon="heroicons_outline:document-text",
    settings=(
        SettingField(
            "provider", "select", "Provider", default=EXTRACTIVE, options=(EXTRACTIVE, OPENAI_COMPATIBLE),
            description="extractive: offline, picks the most central sentences; openai-compatible: a language "
            "model behind an OpenAI-compatible /chat/completions endpoint.",
        ),
        SettingField(
            "sentences", "number", "Sentences", default=5, minimum=1, maximum=50,
            description="How many sentences the extractive summary keeps.",
        ),
        SettingField(
            "baseUrl", "text", "Base URL", pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$",
            description="The API's base URL, e.g. https://api.openai.com/v1 (openai-compatible only).",
        ),
        SettingField(
            "model", "text", "Model", default=DEFAULT_MODEL,
            description="The model name (openai-compatible only).",
        ),
        SettingField(
            "apiKey", "password", "API key",
            description="Sent as a bearer token (openai-compatible only); stored encrypted.",
        ),
    ),
    actions=(
        Action(
            id="generate-minutes", label="Generate Minutes", endpoint_path="minutes", method="POST",
            type="download", icon="heroicons_outline:document-text",
        ),
    ),
    on_session_end=on_session_end,
    check=check,
)
