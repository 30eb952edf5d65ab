"""Sentiment Analysis: a ``sentiment`` annotation on every non-empty chat line, scored with VADER.

VADER (`vaderSentiment`, Hutto & Gilbert 2014) is a lexicon and rule-based model tuned to social-media text: it
handles negation ("not good"), intensifiers ("very"), capitals, exclamation marks, emoticons and emoji, needs
no training data and scores a line in tens of microseconds. One shared ``SentimentIntensityAnalyzer`` serves
every call (it only reads its lexicon).

Data: ``{"compound", "positive", "neutral", "negative", "label"}``. ``positive``/``neutral``/``negative`` are the
proportions of the text in each class (they add up to 1); ``compound`` is the normalised sum of the valences in
[-1, 1]. ``label`` uses the thresholds VADER's authors recommend: ``positive`` when compound >= 0.05,
``negative`` when compound <= -0.05, else ``neutral``. There are no settings.
"""

from __future__ import annotations

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from .base import PluginDefinition

__all__ = ["NEGATIVE_THRESHOLD", "PLUGIN", "POSITIVE_THRESHOLD", "label", "on_message"]

POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05

_ANALYZER = SentimentIntensityAnalyzer()


def label(compound: float) -> str:
    if compound >= POSITIVE_THRESHOLD:
        return "positive"
    if compound <= NEGATIVE_THRESHOLD:
        return "negative"
    return "neutral"


def on_message(text: str, settings: dict) -> dict | None:
    if not text or not text.strip():
        return None
    scores = _ANALYZER.polarity_scores(text)
    compound = scores["compound"]
    return {
        "compound": compound,
        "positive": scores["pos"],
        "neutral": scores["neu"],
        "negative": scores["neg"],
        "label": label(compound),
    }


PLUGIN = PluginDefinition(
    id="7dcc7643-379a-4b94-bb6b-f72f97e77ab9",
    slug="sentiment",
    name="Sentiment Analysis",
    description=(
        "Scores the sentiment of every chat message (positive, neutral or negative) with the VADER model, "
        "offline and in real time."
    ),
    version="1.0.0",
    category="analytics",
    events=("message.created",),
    annotation_type="sentiment",
    icon="heroicons_outline:face-smile",
    on_message=on_message,
)
