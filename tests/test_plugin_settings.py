"""Plugin definitions and settings validation (cortex/lib/plugins/base.py and the catalogue): every field type's
rules, merging with the current settings, defaults, the password mask, and the catalogue's bodies against the
OpenAPI ``Plugin`` schema."""

from __future__ import annotations

import json
import uuid

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from cortex import ROOT
from cortex.lib import plugins
from cortex.lib.plugins import action_items, profanity, sentiment, summary
from cortex.lib.plugins.base import (
    MASK,
    Action,
    PluginDefinition,
    SettingField,
    SettingsError,
    validate_settings,
)


def _plugin(*fields: SettingField, check=None) -> PluginDefinition:
    return PluginDefinition(
        id="00000000-0000-4000-8000-000000000000", slug="test", name="Test", description="", version="1.0.0",
        category="integration", events=("message.created",), annotation_type="sentiment", settings=fields,
        check=check,
    )


TEST = _plugin(
    SettingField("count", "number", "Count", default=3, minimum=1, maximum=100),
    SettingField("ratio", "number", "Ratio"),
    SettingField("enabled", "boolean", "Enabled", default=False),
    SettingField("mode", "select", "Mode", default="a", options=("a", "b")),
    SettingField("words", "chips", "Words", default=()),
    SettingField("secret", "password", "Secret", pattern=r"^sk-\w+$"),
    SettingField("url", "text", "URL", pattern=r"^https?://\S+$"),
    SettingField("note", "text", "Note"),
    SettingField("mail", "email", "Mail"),
)
REQUIRED = _plugin(
    SettingField("name", "text", "Name", required=True),
    SettingField("tags", "chips", "Tags", required=True),
    SettingField("level", "number", "Level", required=True, default=2),
)


def _error(plugin: PluginDefinition, given: object, current: dict | None = None) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        validate_settings(plugin, given, current)  # type: ignore[arg-type]
    return caught.value


# --------------------------------------------------------------------------------------- validation matrix


def test_defaults_are_filled_in_and_absent_optional_fields_left_out():
    assert validate_settings(TEST, None) == {"count": 3, "enabled": False, "mode": "a", "words": []}
    assert validate_settings(TEST, {}) == validate_settings(TEST, None)


@pytest.mark.parametrize(
    ("given", "field", "message"),
    [
        ({"count": "3"}, "count", "must be a number"),
        ({"count": True}, "count", "must be a number"),
        ({"count": None, "ratio": [1]}, "ratio", "must be a number"),
        ({"count": 0}, "count", "must be at least 1"),
        ({"count": 100.5}, "count", "must be at most 100"),
        ({"count": float("nan")}, "count", "must be a finite number"),
        ({"enabled": "true"}, "enabled", "must be a boolean"),
        ({"enabled": 1}, "enabled", "must be a boolean"),
        ({"mode": "c"}, "mode", "must be one of: a, b"),
        ({"mode": 1}, "mode", "must be a string"),
        ({"words": "a,b"}, "words", "must be a list of strings"),
        ({"words": ["a", 1]}, "words", "must be a list of strings"),
        ({"words": ["ok", "   "]}, "words", "entries must be 1 to 100 characters long"),
        ({"words": ["x" * 101]}, "words", "entries must be 1 to 100 characters long"),
        ({"words": [str(i) for i in range(501)]}, "words", "must have at most 500 entries"),
        ({"secret": 12}, "secret", "must be a string"),
        ({"secret": "pk-123"}, "secret", r"must match the pattern ^sk-\w+$"),
        ({"url": "ftp://example.com"}, "url", r"must match the pattern ^https?://\S+$"),
        ({"note": "x" * 2001}, "note", "must be at most 2000 characters"),
        ({"mail": "not-an-address"}, "mail", "must be an e-mail address"),
        ({"mail": "a@b"}, "mail", "must be an e-mail address"),
        ({"mail": "a b@example.com"}, "mail", "must be an e-mail address"),
        ({"nope": 1}, "nope", "unknown setting"),
    ],
)
def test_invalid_values_name_the_field(given, field, message):
    error = _error(TEST, given)
    assert (error.field, error.message) == (field, message)
    assert str(error) == f"settings.{field}: {message}"
    assert isinstance(error, ValueError)


def test_the_settings_must_be_an_object():
    error = _error(TEST, ["count", 3])
    assert (error.field, str(error)) == ("", "settings: must be an object")


def test_valid_values_of_every_type():
    settings = validate_settings(TEST, {
        "count": 100, "ratio": -2.5, "enabled": True, "mode": "b", "words": [" Foo ", "bar", "Foo", "bar "],
        "secret": "sk-abc", "url": "https://example.com/v1", "note": "x" * 2000, "mail": "ops@example.com",
    })
    assert settings == {
        "count": 100, "ratio": -2.5, "enabled": True, "mode": "b", "words": ["Foo", "bar"], "secret": "sk-abc",
        "url": "https://example.com/v1", "note": "x" * 2000, "mail": "ops@example.com",
    }
    assert validate_settings(TEST, {"words": [str(i) for i in range(500)]})["words"][-1] == "499"


def test_empty_strings_skip_pattern_and_address_checks_of_optional_fields():
    assert validate_settings(TEST, {"url": "", "mail": "", "note": ""}) == {
        "count": 3, "enabled": False, "mode": "a", "words": [], "url": "", "mail": "", "note": ""}


def test_required_fields_missing_or_empty_are_refused_and_defaults_count():
    assert _error(REQUIRED, {"tags": ["x"]}).field == "name"
    assert _error(REQUIRED, {"name": "", "tags": ["x"]}).field == "name"
    error = _error(REQUIRED, {"name": "n", "tags": []})
    assert (error.field, error.message) == ("tags", "is required")
    assert validate_settings(REQUIRED, {"name": "n", "tags": ["x"]}) == {"name": "n", "tags": ["x"], "level": 2}


def test_merge_with_current_settings():
    current = validate_settings(TEST, {"count": 7, "words": ["a"], "secret": "sk-old", "note": "keep"})
    merged = validate_settings(TEST, {"enabled": True, "words": ["b"]}, current)
    assert merged == {"count": 7, "enabled": True, "mode": "a", "words": ["b"], "secret": "sk-old",
                      "note": "keep"}
    assert current["words"] == ["a"]  # the input is not changed


def test_current_settings_of_a_dropped_field_are_left_out_and_new_defaults_filled_in():
    assert validate_settings(TEST, {}, {"count": 9, "gone": 1}) == {
        "count": 9, "enabled": False, "mode": "a", "words": []}


def test_none_resets_to_the_default_or_removes_the_value():
    current = validate_settings(TEST, {"count": 7, "note": "n", "secret": "sk-old"})
    reset = validate_settings(TEST, {"count": None, "note": None, "secret": None}, current)
    assert reset == {"count": 3, "enabled": False, "mode": "a", "words": []}
    assert _error(REQUIRED, {"name": None, "tags": ["x"]}, {"name": "n", "tags": ["x"]}).field == "name"
    assert validate_settings(REQUIRED, {"level": None}, {"name": "n", "tags": ["x"], "level": 5})["level"] == 2


def test_the_mask_keeps_the_current_password():
    current = validate_settings(TEST, {"secret": "sk-old"})
    assert validate_settings(TEST, {"secret": MASK, "count": 5}, current)["secret"] == "sk-old"
    assert "secret" not in validate_settings(TEST, {"secret": MASK})  # nothing to keep
    assert validate_settings(TEST, {"secret": "sk-new"}, current)["secret"] == "sk-new"
    assert MASK == "********"
    assert _error(TEST, {"note": MASK * 251}).field == "note"  # only password fields know the mask


def test_a_required_password_sent_masked_without_a_current_value_is_missing():
    plugin = _plugin(SettingField("key", "password", "Key", required=True))
    assert _error(plugin, {"key": MASK}).field == "key"
    assert validate_settings(plugin, {"key": MASK}, {"key": "s3cret"}) == {"key": "s3cret"}


def test_check_runs_last_with_the_complete_settings():
    seen: list[dict] = []

    def check(settings: dict) -> None:
        seen.append(dict(settings))
        if settings["count"] > 50 and not settings["enabled"]:
            raise SettingsError("enabled", "must be on for counts above 50")

    plugin = _plugin(*TEST.settings, check=check)
    assert validate_settings(plugin, {"count": 10})["count"] == 10
    error = _error(plugin, {"count": 60})
    assert (error.field, str(error)) == ("enabled", "settings.enabled: must be on for counts above 50")
    assert seen[0] == {"count": 10, "enabled": False, "mode": "a", "words": []}
    assert _error(plugin, {"count": 500}).field == "count"  # field rules first: check sees valid values only
    assert len(seen) == 2


def test_definitions_refuse_invalid_defaults_and_types():
    with pytest.raises(ValueError):
        SettingField("x", "color", "X")
    with pytest.raises(ValueError):
        SettingField("x", "select", "X")
    with pytest.raises(SettingsError):
        SettingField("x", "number", "X", default=0, minimum=1)
    with pytest.raises(ValueError):
        _plugin(SettingField("x", "text", "X"), SettingField("x", "number", "Y"))


# ------------------------------------------------------------------------------------------------ bodies


def test_setting_field_body_leaves_absent_members_out():
    assert SettingField("note", "text", "Note").body() == {
        "key": "note", "type": "text", "label": "Note", "description": "", "required": False}
    body = SettingField("n", "number", "N", "help", True, 3, minimum=1, maximum=9.5).body()
    assert body == {"key": "n", "type": "number", "label": "N", "description": "help", "required": True,
                    "default": 3, "validation": {"min": 1, "max": 9.5}}
    chips = SettingField("w", "chips", "W", default=["a"], pattern="^x").body()
    assert chips["default"] == ["a"] and chips["validation"] == {"pattern": "^x"}
    assert SettingField("m", "select", "M", options=["a"]).body()["options"] == ["a"]


def test_action_body():
    assert Action("a", "A", "run", "POST", "download").body() == {
        "id": "a", "label": "A", "endpointPath": "run", "method": "POST", "type": "download"}
    assert summary.PLUGIN.actions[0].body() == {
        "id": "generate-minutes", "label": "Generate Minutes", "icon": "heroicons_outline:document-text",
        "endpointPath": "minutes", "method": "POST", "type": "download"}


# --------------------------------------------------------------------------------------------- catalogue

IDS = {
    "profanity-filter": "384f36ba-aaef-4c60-b074-1b6f4ea6ee53",
    "sentiment": "7dcc7643-379a-4b94-bb6b-f72f97e77ab9",
    "session-summary": "8e6388a0-5deb-4f2a-b93e-3b9ee47ef2ea",
    "action-items": "fad97f2a-4658-424a-ac2a-228988db7847",
}


def test_catalogue_ids_are_stable_distinct_uuids():
    assert [p.slug for p in plugins.CATALOGUE] == list(IDS)
    assert {p.slug: p.id for p in plugins.CATALOGUE} == IDS
    for plugin in plugins.CATALOGUE:
        assert str(uuid.UUID(plugin.id)) == plugin.id
    assert plugins.CATALOGUE == (profanity.PLUGIN, sentiment.PLUGIN, summary.PLUGIN, action_items.PLUGIN)


def test_find_by_id_or_slug():
    for slug, plugin_id in IDS.items():
        assert plugins.find(slug) is plugins.find(plugin_id) is plugins.find(plugin_id.upper())
        assert plugins.find(slug).slug == slug
    assert plugins.find("nope") is None
    assert plugins.find("") is None
    assert plugins.find(None) is None  # type: ignore[arg-type]


def test_catalogue_entries():
    expected = {
        "profanity-filter": ("Profanity Filter", "moderation", ("message.created",), "profanity",
                             "heroicons_outline:shield-check"),
        "sentiment": ("Sentiment Analysis", "analytics", ("message.created",), "sentiment",
                      "heroicons_outline:face-smile"),
        "session-summary": ("Session Summary", "analytics", ("session.ended",), "summary",
                            "heroicons_outline:document-text"),
        "action-items": ("Action Items", "automation", ("session.ended",), "action_items",
                         "heroicons_outline:clipboard-document-check"),
    }
    for plugin in plugins.CATALOGUE:
        assert (plugin.name, plugin.category, plugin.events, plugin.annotation_type, plugin.icon) == expected[
            plugin.slug]
        assert plugin.version == "1.0.0"
        message = "message.created" in plugin.events
        assert (plugin.on_message is not None) is message
        assert (plugin.on_session_end is not None) is not message


def test_profanity_settings_interface():
    assert validate_settings(profanity.PLUGIN, {}) == {
        "autoSanction": False, "sanctionType": "mute", "threshold": 3, "windowMinutes": 60,
        "durationMinutes": 60, "customWords": [], "allowWords": []}
    fields = {f.key: f for f in profanity.PLUGIN.settings}
    assert (fields["threshold"].minimum, fields["threshold"].maximum) == (1, 100)
    assert (fields["windowMinutes"].minimum, fields["windowMinutes"].maximum) == (1, 10080)
    assert (fields["durationMinutes"].minimum, fields["durationMinutes"].maximum) == (0, 525600)
    assert set(fields["sanctionType"].options) >= {"warn", "mute", "listen_only", "shadow_mute", "text_only"}
    assert _error(profanity.PLUGIN, {"threshold": 101}).field == "threshold"
    assert _error(profanity.PLUGIN, {"sanctionType": "explode"}).field == "sanctionType"
    assert profanity.PLUGIN.secret_keys() == ()


def test_summary_settings_interface_and_check():
    assert validate_settings(summary.PLUGIN, {}) == {"provider": "extractive", "sentences": 5,
                                                     "model": "gpt-4o-mini"}
    assert summary.PLUGIN.secret_keys() == ("apiKey",)
    assert _error(summary.PLUGIN, {"sentences": 51}).field == "sentences"
    assert _error(summary.PLUGIN, {"baseUrl": "api.example.com"}).field == "baseUrl"
    assert _error(summary.PLUGIN, {"provider": "openai-compatible", "apiKey": "k"}).field == "baseUrl"
    error = _error(summary.PLUGIN, {"provider": "openai-compatible", "baseUrl": "https://llm.example.com/v1"})
    assert str(error) == "settings.apiKey: is required when provider is openai-compatible"
    settings = validate_settings(summary.PLUGIN, {"provider": "openai-compatible",
                                                  "baseUrl": "https://llm.example.com/v1/", "apiKey": "sk-1"})
    assert settings["apiKey"] == "sk-1"
    # Back to extractive: the LLM settings may stay or go.
    assert validate_settings(summary.PLUGIN, {"provider": "extractive", "apiKey": None}, settings)[
        "provider"] == "extractive"
    # The masked key keeps the stored one, and the check sees it.
    kept = validate_settings(summary.PLUGIN, {"apiKey": MASK, "model": "llama3"}, settings)
    assert (kept["apiKey"], kept["model"]) == ("sk-1", "llama3")


def test_action_items_and_sentiment_settings_interface():
    assert validate_settings(action_items.PLUGIN, None) == {"maxItems": 50}
    assert _error(action_items.PLUGIN, {"maxItems": 0}).field == "maxItems"
    assert validate_settings(sentiment.PLUGIN, None) == {}
    assert _error(sentiment.PLUGIN, {"anything": 1}).field == "anything"


def _plugin_validator() -> Draft202012Validator:
    document = json.loads((ROOT / "openapi" / "cortex.json").read_text())
    registry = Registry().with_resource("urn:cortex", DRAFT202012.create_resource(document))
    return Draft202012Validator({"$ref": "urn:cortex#/components/schemas/Plugin"}, registry=registry)


def test_every_body_matches_the_openapi_plugin_schema():
    validator = _plugin_validator()
    for plugin in plugins.CATALOGUE:
        body = plugin.body()
        errors = [e.message for e in validator.iter_errors(body)]
        assert errors == [], (plugin.slug, errors)
        assert set(body) == {"id", "slug", "name", "description", "version", "category", "events",
                             "outputAnnotationType", "settingsSchema", "icon", "isActive"}
        assert body["isActive"] is True
        assert [f["key"] for f in body["settingsSchema"]] == [f.key for f in plugin.settings]
        assert json.loads(json.dumps(body)) == body
        for field in body["settingsSchema"]:
            assert None not in field.values()
    # The validator does check, through the $ref to PluginSettingField too.
    assert list(validator.iter_errors({"id": "x"}))
    broken = profanity.PLUGIN.body()
    broken["settingsSchema"][0]["type"] = "colour"
    assert list(validator.iter_errors(broken))


def test_definitions_are_hashable_and_compare_by_value():
    assert len({p for p in plugins.CATALOGUE}) == 4
    assert hash(profanity.PLUGIN) == hash(profanity.PLUGIN)
