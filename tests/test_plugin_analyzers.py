"""The plugin analyzers (cortex/lib/plugins): profanity, sentiment, session summary (extractive and
OpenAI-compatible, minutes) and action items, on fixed transcripts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from better_profanity import Profanity

from cortex import ROOT
from cortex.lib.plugins import action_items, profanity, sentiment, summary
from cortex.lib.plugins.base import Line, PluginError, validate_settings

T0 = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)

MEETING = [
    ("Alice", "Good morning everyone. Let's get started with the release planning."),
    ("Bob", "Morning! The release candidate build passed all integration tests last night."),
    ("Carol", "Great news. The customer demo is scheduled for Thursday afternoon."),
    ("Alice", "We need to finalize the release notes before the demo."),
    ("Bob", "I'll update the release notes today."),
    ("Carol", "Bob, can you also check the crash reports from the beta testers?"),
    ("Bob", "Sure. I won't have time for the dashboard though."),
    ("Alice", "Carol, could you prepare the demo script for Thursday?"),
    ("Carol", "I will not present the roadmap, but I can prepare the demo script."),
    ("Alice", "What will we do about the flaky login test?"),
    ("Bob", "TODO: fix the flaky login test in the integration suite."),
    ("Carol", "Can you hear me? My audio is weird."),
    ("Alice", "Yes. Let's also schedule a retrospective after the release."),
    ("Bob", "The integration tests and the release candidate look stable, so the release can ship Friday."),
    ("Alice", "I will?"),
    ("Carol", "Let me know if the demo environment needs more memory."),
]


def transcript(rows: list[tuple[str, str]]) -> list[Line]:
    return [
        Line(f"m{i}", name.lower(), name, text, T0 + timedelta(seconds=30 * i))
        for i, (name, text) in enumerate(rows)
    ]


LINES = transcript(MEETING)
PROFANITY_DEFAULTS = validate_settings(profanity.PLUGIN, {})


# ------------------------------------------------------------------------------------------------ profanity


def check_profanity(text: str, **settings: object) -> dict | None:
    return profanity.PLUGIN.on_message(text, validate_settings(profanity.PLUGIN, settings))


def test_profane_line():
    assert check_profanity("This is shit.") == {
        "isProfane": True, "words": ["shit"], "count": 1, "censored": "This is ****."}


@pytest.mark.parametrize(
    "text",
    ["Good game everyone, well played!", "The class assignment is due", "Scunthorpe United won",
     "assassin's creed", "cocktail party at nine", "I passed the exam", "", "   "],
)
def test_clean_lines_get_no_annotation(text):
    assert check_profanity(text) is None


@pytest.mark.parametrize(
    ("text", "words", "censored"),
    [
        ("you are a sh1t", ["sh1t"], "you are a ****"),
        ("f*ck this", ["f*ck"], "**** this"),
        ("what an a$$hole", ["a$$hole"], "what an ****"),
        ("5H1T happens", ["5h1t"], "**** happens"),
        ("total b1tch move", ["b1tch"], "total **** move"),
        ("f.u.c.k you", ["f.u.c.k"], "**** you"),
        ("that was bull shit", ["bull shit"], "that was ****"),
        ('he said "shit" twice', ["shit"], 'he said "****" twice'),
        ("Shit, shit and FUCK", ["shit", "fuck"], "****, **** and ****"),
    ],
)
def test_obfuscated_and_repeated_words(text, words, censored):
    data = check_profanity(text)
    assert data is not None
    assert (data["isProfane"], data["words"], data["censored"]) == (True, words, censored)
    assert data["count"] == censored.count("****")


def test_custom_words_are_flagged_with_their_look_alikes():
    settings = {"customWords": ["Frak", "smeg head"]}
    assert check_profanity("oh frak", **settings)["words"] == ["frak"]
    assert check_profanity("FR@K that", **settings)["words"] == ["fr@k"]
    assert check_profanity("what a smeg head", **settings)["words"] == ["smeg head"]
    assert check_profanity("oh frak") is None  # only with the setting


def test_allow_words_are_never_flagged():
    assert check_profanity("what the hell") is not None
    settings = {"allowWords": ["hell", "DAMN"]}
    assert check_profanity("what the hell, damn it", **settings) is None
    assert check_profanity("what the h3ll", **settings) is None
    assert check_profanity("what the hell, shit", **settings)["words"] == ["shit"]
    # An allowed word wins over the same custom word.
    assert check_profanity("frak", customWords=["frak"], allowWords=["frak"]) is None


EQUIVALENCE_CORPUS = [
    "you are a sh1t", "f*ck this", "a$$hole here", "b1tch please", "what the hell man", "bull shit really",
    "hand job offer", "this is fine", "Shit happens", "f.u.c.k you", "fuck-tard", "the class assignment",
    "Scunthorpe", "I'm an @ss and a 5h1t", "dick move", "cocktail party", "assassin creed", "blow job x",
    "2 girls 1 cup now", "damn it all", "b00bs pic", "pr0n site", "s h i t x", "good game, well played",
    "My email is test@example.com", "price is $5 and 50% off", "NOBODY expects the Spanish inquisition",
]


def test_the_compiled_detector_agrees_with_better_profanity():
    library = Profanity()
    detector = profanity.detector()
    for text in EQUIVALENCE_CORPUS:
        data = detector.analyze(text)
        assert (data["censored"] if data else text) == library.censor(text), text


def test_detectors_are_cached_per_word_lists():
    assert profanity.detector() is profanity.detector((), ())
    assert profanity.detector(["Frak "], ["hell"]) is profanity.detector(["frak"], ["HELL"])
    assert profanity.detector(["frak"]) is not profanity.detector()


def test_profanity_filter_is_fast():
    """The engine annotates every message with every plugin: a line must take microseconds, not milliseconds."""
    line = "Hey everyone, I think we should ship the release on Friday after the review meeting is done."
    settings = validate_settings(profanity.PLUGIN, {"customWords": ["frak"], "allowWords": ["hell"]})
    profanity.PLUGIN.on_message(line, settings)
    start = time.perf_counter()
    for _ in range(1000):
        profanity.PLUGIN.on_message(line, settings)
    assert time.perf_counter() - start < 1.0  # ~30 µs a line measured; the library's censor() takes ~15 ms


# ------------------------------------------------------------------------------------------------ sentiment


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love this team, great work everyone!", "positive"),
        ("This is terrible, I hate how broken it is.", "negative"),
        ("The meeting is at three in room four.", "neutral"),
    ],
)
def test_sentiment_labels(text, label):
    data = sentiment.PLUGIN.on_message(text, {})
    assert set(data) == {"compound", "positive", "neutral", "negative", "label"}
    assert data["label"] == label
    assert -1 <= data["compound"] <= 1
    assert abs(data["positive"] + data["neutral"] + data["negative"] - 1) < 0.01
    if label == "positive":
        assert data["compound"] >= 0.05
    elif label == "negative":
        assert data["compound"] <= -0.05


def test_sentiment_thresholds_and_empty_lines():
    assert [sentiment.label(x) for x in (0.05, 0.0499, 0.0, -0.0499, -0.05)] == [
        "positive", "neutral", "neutral", "neutral", "negative"]
    assert sentiment.PLUGIN.on_message("", {}) is None
    assert sentiment.PLUGIN.on_message("  \n", {}) is None
    assert sentiment.PLUGIN.on_message("ok", {})["label"] in ("positive", "neutral")


# ------------------------------------------------------------------------------------------------- summary


class FakeContext:
    def __init__(self, answer: object = None, error: Exception | None = None) -> None:
        self.answer = answer
        self.error = error
        self.calls: list[tuple[str, dict, dict, float]] = []

    def post_json(self, url: str, body: dict, headers: dict[str, str], timeout: float) -> dict:
        self.calls.append((url, body, headers, timeout))
        if self.error is not None:
            raise self.error
        return self.answer  # type: ignore[return-value]


def summarise(lines: list[Line], ctx: FakeContext | None = None, **settings: object) -> dict | None:
    valid = validate_settings(summary.PLUGIN, settings)
    return summary.PLUGIN.on_session_end(lines, valid, ctx or FakeContext())


def sentence_sources(lines: list[Line]) -> list[tuple[str, str]]:
    """Every (speaker, sentence) of the transcript, in order."""
    return [(line.sender_name, s) for line in lines for s in summary.TOKENIZER.to_sentences(line.content)]


@pytest.mark.parametrize("count", [1, 3, 5])
def test_extractive_summary_keeps_sentences_in_order_with_speakers(count):
    data = summarise(LINES, sentences=count)
    assert data is not None
    assert (data["provider"], data["messageCount"], data["participants"]) == (
        "extractive", 16, ["Alice", "Bob", "Carol"])
    picked = [tuple(row.split(": ", 1)) for row in data["summary"].split("\n")]
    assert len(picked) == count
    sources = sentence_sources(LINES)
    positions = [sources.index(row) for row in picked]  # each is a real sentence of that speaker
    assert positions == sorted(positions)


def test_extractive_summary_picks_the_central_sentences():
    text = summarise(LINES, sentences=3)["summary"]
    assert "release" in text
    assert "Can you hear me" not in text and "I will?" not in text


def test_short_transcripts_are_returned_whole():
    lines = transcript([("Alice", "Hello there,\n  team."), ("Bob", "Hi!"), ("Alice", "   ")])
    data = summarise(lines, sentences=2)
    assert data["summary"] == "Alice: Hello there, team.\nBob: Hi!"
    assert (data["messageCount"], data["participants"]) == (3, ["Alice", "Bob"])


def test_empty_transcripts_get_no_summary():
    assert summarise([]) is None
    assert summarise(transcript([("Alice", " "), ("Bob", "")])) is None


def test_numpy_lexrank_ranks_like_sumys():
    from sumy.models.dom import ObjectDocumentModel, Paragraph
    from sumy.summarizers.lex_rank import LexRankSummarizer

    from cortex.lib.plugins import _lexrank

    rows = [(name, text) for name, text in MEETING] * 3 + [
        ("Dave", f"Release item {i} needs review by the integration team before Friday.") for i in range(20)
    ]
    sentences = [
        _lexrank._Sentence(text, summary.TOKENIZER, speaker, i)
        for i, (speaker, text) in enumerate(sentence_sources(transcript(rows)))
    ]
    document = ObjectDocumentModel([Paragraph(sentences)])
    original, fast = LexRankSummarizer(_lexrank._STEMMER), _lexrank.LexRank(_lexrank._STEMMER)
    original.stop_words = fast.stop_words = _lexrank.STOP_WORDS
    assert [s.order for s in fast(document, 7)] == [s.order for s in original(document, 7)]


def test_extractive_summary_caps_the_work():
    rows = [(f"P{i % 7}", f"Topic {i % 13} update number {i}. The server metrics for item {i} look fine!")
            for i in range(2600)]
    start = time.perf_counter()
    text = summary.extractive_summary(transcript(rows), 5)
    assert time.perf_counter() - start < 20
    assert len(text.split("\n")) == 5
    numbers = [int(n) for n in re.findall(r"(?:number|item) (\d+)", text)]
    assert numbers and min(numbers) >= 600  # only the last 2000 lines count


def test_extractive_summary_needs_no_nltk_data(tmp_path):
    """With no NLTK data anywhere (and NLTK's loaders booby-trapped), the summary still works offline."""
    home = tmp_path / "home"
    home.mkdir()
    script = """
import json, sys
import nltk.data

def refuse(*args, **kwargs):
    raise AssertionError("NLTK data was asked for")

nltk.data.find = nltk.data.load = refuse
from cortex.lib.plugins import summary
from cortex.lib.plugins.base import Line
from datetime import datetime, timezone
rows = json.loads(sys.stdin.read())
lines = [Line(str(i), None, name, text, datetime.now(timezone.utc)) for i, (name, text) in enumerate(rows)]
print(json.dumps(summary.PLUGIN.on_session_end(lines, {"provider": "extractive", "sentences": 2}, None)))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NLTK")}
    env.update(NLTK_DATA=str(tmp_path / "no-nltk-data"), HOME=str(home), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(MEETING), capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["messageCount"] == 16 and len(data["summary"].split("\n")) == 2
    assert list(home.iterdir()) == []  # nothing downloaded or cached


LLM = {"provider": "openai-compatible", "baseUrl": "https://llm.example.com/v1/", "apiKey": "sk-test-secret",
       "model": "llama-3.1-8b"}


def test_openai_compatible_summary():
    ctx = FakeContext({"choices": [{"message": {"role": "assistant", "content": "  The team plans a release.\n"}}]})
    data = summarise(LINES, ctx, **LLM)
    assert data == {"summary": "The team plans a release.", "provider": "openai-compatible", "messageCount": 16,
                    "participants": ["Alice", "Bob", "Carol"]}
    [(url, body, headers, timeout)] = ctx.calls
    assert url == "https://llm.example.com/v1/chat/completions"
    assert headers == {"Authorization": "Bearer sk-test-secret"}
    assert timeout == 60
    assert (body["model"], body["temperature"]) == ("llama-3.1-8b", 0.2)
    system, user = body["messages"]
    assert system["role"] == "system" and "summar" in system["content"]
    assert user["role"] == "user"
    assert user["content"].splitlines()[0] == "Alice: Good morning everyone. Let's get started with the release planning."
    assert user["content"].splitlines()[-1] == "Carol: Let me know if the demo environment needs more memory."


def test_openai_compatible_prompt_keeps_the_end_of_long_transcripts():
    ctx = FakeContext({"choices": [{"message": {"content": "ok"}}]})
    rows = [("Alice", f"Line {i} " + "x" * 200) for i in range(600)]
    summarise(transcript(rows), ctx, **LLM)
    content = ctx.calls[0][1]["messages"][1]["content"]
    assert 55_000 < len(content) <= summary.MAX_PROMPT_CHARS
    assert content.splitlines()[-1].startswith("Alice: Line 599 ")
    assert "Line 0 " not in content


@pytest.mark.parametrize(
    "answer",
    [{}, [], {"choices": []}, {"choices": [{}]}, {"choices": [{"message": None}]},
     {"choices": [{"message": {"content": "  "}}]}, {"choices": [{"message": {"content": 42}}]},
     {"error": {"message": "invalid key sk-test-secret"}}],
)
def test_openai_compatible_bad_answers_fail_without_leaking_the_key(answer):
    with pytest.raises(PluginError) as caught:
        summarise(LINES, FakeContext(answer), **LLM)
    assert "choices[0].message.content" in str(caught.value)
    assert "sk-test-secret" not in str(caught.value)


def test_openai_compatible_transport_errors_propagate():
    with pytest.raises(PluginError, match="refused"):
        summarise(LINES, FakeContext(error=PluginError("address refused")), **LLM)


def test_openai_compatible_without_url_or_key_fails_clearly():
    settings = {"provider": "openai-compatible", "sentences": 5, "model": "m"}
    with pytest.raises(PluginError, match="baseUrl and apiKey"):
        summary.PLUGIN.on_session_end(LINES, settings, FakeContext())


# ------------------------------------------------------------------------------------------------- minutes


def test_render_minutes():
    lines = transcript([("Alice", "Welcome *all*."), ("Bob <b>", "# Injected heading\n## and another"),
                        ("Carol", "See [link](http://x) and `code`")])
    items = [{"who": "Bob", "what": "Update the release notes"}, {"who": "team", "what": "Ship *it*"}]
    text = summary.render_minutes("Release #5", T0, ["Alice", "Bob <b>", "Carol"],
                                  "Alice: the plan\n# not a heading\n> nor a quote", items, lines)
    rows = text.splitlines()
    headings = [row for row in rows if row.startswith("#")]
    assert headings == ["# Minutes: Release #5", "## Participants", "## Summary", "## Action items",
                        "## Transcript"]
    assert "**Date:** 2024-05-01 14:00 UTC" in rows
    assert "- Bob \\<b\\>" in rows
    assert rows[rows.index("## Summary") + 2 : rows.index("## Summary") + 5] == [
        "Alice: the plan", "\\# not a heading", "\\> nor a quote"]
    assert "- **Bob**: Update the release notes" in rows
    assert "- **team**: Ship \\*it\\*" in rows
    assert "- `14:00:00` **Alice**: Welcome \\*all\\*." in rows
    assert "- `14:00:30` **Bob \\<b\\>**: # Injected heading ## and another" in rows
    assert "- `14:01:00` **Carol**: See \\[link\\](http://x) and \\`code\\`" in rows
    assert text.endswith("\n")


def test_render_minutes_without_summary_or_items():
    text = summary.render_minutes("Standup", T0, [], None, None, [])
    sections = text.split("## ")
    assert sections[1].strip() == "Participants\n\n_None recorded._"
    assert sections[2].strip() == "Summary\n\n_No summary available._"
    assert sections[3].strip() == "Action items\n\n_None recorded._"
    assert sections[4].strip() == "Transcript\n\n_No messages._"
    assert summary.render_minutes("S", T0, [], "", [], []).count("_None recorded._") == 2


# -------------------------------------------------------------------------------------------- action items


def items_of(lines: list[Line], **settings: object) -> dict | None:
    return action_items.PLUGIN.on_session_end(lines, validate_settings(action_items.PLUGIN, settings), None)


def test_action_items_of_the_meeting():
    data = items_of(LINES)
    assert [(i["who"], i["what"]) for i in data["items"]] == [
        ("team", "Finalize the release notes before the demo"),  # "we need to"
        ("Bob", "Update the release notes today"),  # "I'll"
        ("Bob", "Check the crash reports from the beta testers"),  # "Bob, can you"
        ("Carol", "Prepare the demo script for Thursday"),  # "Carol, could you"
        ("Carol", "Prepare the demo script"),  # "..., but I can"
        ("unassigned", "Fix the flaky login test in the integration suite"),  # TODO
        ("team", "Schedule a retrospective after the release"),  # "let's"
    ]
    assert data["count"] == 7
    assert [(i["messageId"], i["speaker"]) for i in data["items"]] == [
        ("m3", "Alice"), ("m4", "Bob"), ("m5", "Carol"), ("m7", "Alice"), ("m8", "Carol"), ("m10", "Bob"),
        ("m12", "Alice")]


@pytest.mark.parametrize(
    ("speaker", "text", "who", "what"),
    [
        ("Alice", "I'll send the invoice tomorrow.", "Alice", "Send the invoice tomorrow"),
        ("Alice", "I’m going to draft the proposal!", "Alice", "Draft the proposal"),
        ("Alice", "I am going to go ahead and merge it", "Alice", "Merge it"),
        ("Alice", "Let me check the server logs.", "Alice", "Check the server logs"),
        ("Alice", "I'll take care of the budget.", "Alice", "Take care of the budget"),
        ("Alice", "I can set up the staging server.", "Alice", "Set up the staging server"),
        ("Alice", "So, I will just quickly fix the typo, thanks.", "Alice", "Fix the typo"),
        ("Alice", "Could you review my pull request, Bob?", "Bob", "Review my pull request"),
        ("Alice", "Bob, please book the room", "Bob", "Book the room"),
        ("Alice", "@bob can you rotate the keys, please?", "Bob", "Rotate the keys"),
        ("Alice", "bob, can you rotate the keys?", "Bob", "Rotate the keys"),
        ("Alice", "Please send the agenda to Bob.", "Bob", "Send the agenda to Bob"),
        ("Alice", "Please send the agenda.", "unassigned", "Send the agenda"),
        ("Alice", "Dave, can you restart the build?", "Dave", "Restart the build"),
        ("Alice", "Everyone, please fill in the survey.", "team", "Fill in the survey"),
        ("Alice", "Would you mind updating the wiki, Bob?", "Bob", "Updating the wiki"),
        ("Alice", "We should update the docs.", "team", "Update the docs"),
        ("Alice", "OK so we have to renew the certificate!!", "team", "Renew the certificate"),
        ("Alice", "Let's ship it on Friday.", "team", "Ship it on Friday"),
        ("Alice", "TODO: Bob to rotate the keys", "Bob", "Rotate the keys"),
        ("Alice", "todo - write the migration", "unassigned", "Write the migration"),
        ("Alice", "Action item: update the FAQ", "unassigned", "Update the FAQ"),
        ("Alice", "Action items: I'll email the vendor", "Alice", "Email the vendor"),
        ("Alice", "Next steps: Bob, schedule the follow-up", "Bob", "Schedule the follow-up"),
    ],
)
def test_action_item_forms(speaker, text, who, what):
    lines = transcript([("Bob", "Hello."), (speaker, text)])
    assert [(i["who"], i["what"]) for i in items_of(lines)["items"]] == [(who, what)]


@pytest.mark.parametrize(
    "text",
    [
        "I won't do that.", "I will not attend.", "I'm not going to fix it.", "I can't make it.",
        "I cannot promise anything.", "I will never use tabs.", "We don't need to change anything.",
        "We shouldn't deploy today.", "Let's not rush.", "Please don't touch prod.", "Can you not shout?",
        "I will?", "I'll send it?", "What will we do next?", "Should we ship?", "We need to?",
        "Can you see my screen?", "Can you hear me now?", "Would you like some coffee?", "I'll be there soon.",
        "Let me think about it.", "Let me know when you're done.", "Let's see.", "Let's move on.",
        "Let's get started.", "Let's talk about the budget.", "I'm going to the office.",
        "I think the build is green.", "The release went well.", "Thanks everyone!", "",
        "We have to go now, bye!", "I need to leave early today.", "We need to talk about the budget.",
        "Let's go with option B.",
    ],
)
def test_not_action_items(text):
    assert items_of(transcript([("Alice", text), ("Bob", "Hello.")])) == {"items": [], "count": 0}


def test_action_items_are_capped_and_deduplicated():
    rows = [("Alice", f"I'll fix bug {i}.") for i in range(60)] + [("Alice", "I'll fix bug 1!")]
    assert [i["what"] for i in items_of(transcript(rows), maxItems=3)["items"]] == [
        "Fix bug 0", "Fix bug 1", "Fix bug 2"]
    data = items_of(transcript(rows), maxItems=200)
    assert data["count"] == 60 == len(data["items"])
    assert items_of(transcript([("Alice", "I'll fix it."), ("Alice", "I will fix it")]))["count"] == 1


def test_action_items_of_empty_transcripts():
    assert items_of([]) is None
    assert items_of(transcript([("Alice", "  ")])) is None
    assert items_of(transcript([("Alice", "hi")])) == {"items": [], "count": 0}


def test_long_tasks_are_cut():
    data = items_of(transcript([("Alice", "I'll " + "write a very long sentence " * 30)]))
    what = data["items"][0]["what"]
    assert len(what) == action_items.MAX_WHAT and what.endswith("…")
