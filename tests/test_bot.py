"""Bot drivers: the Redis command message on cortex:bot:commands, failures, and driver selection."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import redis

from cortex import bot, crypto, odin
from models.sessions import BotCommandError, create_session
from models.settings import AppSettings

REDIS_TEST_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def listener():
    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    yield client
    client.close()


@pytest.fixture
def session(owner):
    AppSettings.create(project=owner.project.id, token_provider_type="access_key", bot_user_id="bot",
                       access_key_encrypted=crypto.encrypt(odin.generate_access_key()))
    return create_session(owner.project, owner.user.id, "Daily Standup", "room_abc123", "gw.example.com",
                          auto_start=False)


@pytest.mark.parametrize("command", ["start", "stop"])
def test_redis_driver_publishes_the_command(listener, session, command):
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("cortex:bot:commands")
    driver = bot.RedisBotDriver(REDIS_TEST_URL)
    try:
        pubsub.get_message(timeout=1)
        getattr(driver, command)(session)
        message = pubsub.get_message(timeout=5)
    finally:
        driver.client.close()
        pubsub.close()
    assert message["channel"] == b"cortex:bot:commands"
    sent = json.loads(message["data"])
    assert sent == {
        "command": command,
        "sessionId": session.id,
        "projectId": session.project_id,
        "tenantId": session.tenant_id,
        "externalRoomId": "room_abc123",
        "gateway": "gw.example.com",
        "title": "Daily Standup",
        "issuedAt": sent["issuedAt"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", sent["issuedAt"])


def test_redis_driver_without_a_subscriber_fails(listener, session):
    driver = bot.RedisBotDriver(REDIS_TEST_URL, channel="cortex:bot:commands:nobody-listens")
    try:
        with pytest.raises(BotCommandError, match="no bot worker"):
            driver.start(session)
    finally:
        driver.client.close()


def test_redis_driver_unreachable_fails(session):
    driver = bot.RedisBotDriver("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(BotCommandError, match="not published"):
            driver.stop(session)
    finally:
        driver.client.close()


def test_redis_driver_needs_a_url():
    with pytest.raises(ValueError):
        bot.RedisBotDriver(None)


def select(app, monkeypatch, name: str, redis_url: str | None = None) -> None:
    """Settings.bot_driver when Settings has it, else the cached CORTEX_BOT_DRIVER; and REDIS_URL."""
    monkeypatch.setattr(bot, "_env_driver_name", lambda: name)
    runtime = app.extensions["cortex"]
    changes = {"redis_url": redis_url}
    if hasattr(runtime.settings, "bot_driver"):
        changes["bot_driver"] = name
    monkeypatch.setattr(runtime, "settings", replace(runtime.settings, **changes))


def test_driver_selection(app, monkeypatch):
    monkeypatch.setattr(bot, "_drivers", {})
    select(app, monkeypatch, "local")
    first = bot.bot_driver()
    assert isinstance(first, bot.LocalBotDriver) and bot.bot_driver() is first

    select(app, monkeypatch, "redis")
    with pytest.raises(ValueError, match="REDIS_URL"):
        bot.bot_driver()
    select(app, monkeypatch, "redis", REDIS_TEST_URL)
    driver = bot.bot_driver()
    try:
        assert isinstance(driver, bot.RedisBotDriver) and bot.bot_driver() is driver
    finally:
        driver.client.close()

    select(app, monkeypatch, "carrier-pigeon")
    with pytest.raises(ValueError, match="CORTEX_BOT_DRIVER"):
        bot.bot_driver()


def test_environment_fallback_without_an_app(monkeypatch):
    monkeypatch.setattr(bot, "_drivers", {})
    monkeypatch.setattr(bot, "_env_driver_name", lambda: "local")
    assert isinstance(bot.bot_driver(), bot.LocalBotDriver)


def test_driver_name_is_read_from_the_environment_once(monkeypatch):
    bot._env_driver_name.cache_clear()
    try:
        monkeypatch.setenv("CORTEX_BOT_DRIVER", " Redis ")
        assert bot._env_driver_name() == "redis"
        monkeypatch.setenv("CORTEX_BOT_DRIVER", "local")
        assert bot._env_driver_name() == "redis"  # cached for the process
        bot._env_driver_name.cache_clear()
        monkeypatch.delenv("CORTEX_BOT_DRIVER")
        assert bot._env_driver_name() == "local"
    finally:
        bot._env_driver_name.cache_clear()
