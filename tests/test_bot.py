"""Bot drivers: the Redis command message on cortex:bot:commands, failures, and driver selection."""

from __future__ import annotations

import re

import pytest
import redis

from cortex.integrations import bots as bot
from cortex.lib import crypto, odin
from cortex.settings import Settings
from models.sessions import BotCommandError, create_session
from models.settings import AppSettings
from tests.conftest import pubsub_message

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
        message = pubsub_message(pubsub, lambda body: body.get("sessionId") == session.id)
    finally:
        driver.client.close()
        pubsub.close()
    assert message["channel"] == b"cortex:bot:commands"
    sent = message["body"]
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


def settings_for(name: str, redis_url: str | None = None) -> Settings:
    """Settings selecting a bot driver (CORTEX_BOT_DRIVER) and a Redis URL, read as the server reads them."""
    env = {"CORTEX_BOT_DRIVER": name, **({"REDIS_URL": redis_url} if redis_url else {})}
    return Settings.from_env(env, data_dir="/tmp", database_url="sqlite:///:memory:", secret_key="k" * 32)


def test_driver_selection(monkeypatch):
    monkeypatch.setattr(bot, "_drivers", {})
    first = bot.bot_driver(settings_for("local"))
    assert isinstance(first, bot.LocalBotDriver) and bot.bot_driver(settings_for("local")) is first

    with pytest.raises(ValueError, match="REDIS_URL"):
        bot.bot_driver(settings_for("redis"))
    driver = bot.bot_driver(settings_for("redis", REDIS_TEST_URL))
    try:
        assert isinstance(driver, bot.RedisBotDriver) and bot.bot_driver(settings_for("redis", REDIS_TEST_URL)) is driver
    finally:
        driver.client.close()

    with pytest.raises(ValueError, match="CORTEX_BOT_DRIVER"):
        bot.bot_driver(settings_for("carrier-pigeon"))


def test_driver_name_comes_from_the_settings_case_and_spaces_ignored(monkeypatch):
    monkeypatch.setattr(bot, "_drivers", {})
    assert settings_for(" Redis ").bot_driver == " Redis "  # read once, as given
    driver = bot.bot_driver(settings_for(" Redis ", REDIS_TEST_URL))
    try:
        assert isinstance(driver, bot.RedisBotDriver)
    finally:
        driver.client.close()
    default = Settings.from_env({}, data_dir="/tmp", database_url="sqlite:///:memory:", secret_key="k" * 32)
    assert isinstance(bot.bot_driver(default), bot.LocalBotDriver)
