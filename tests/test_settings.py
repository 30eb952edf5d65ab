"""Settings: environment parsing and the generated secret key."""

import multiprocessing
import stat

import pytest

from cortex.settings import Settings


def test_environment_is_read_once_into_settings(tmp_path):
    settings = Settings.from_env(
        {"CORTEX_DATA_DIR": str(tmp_path), "CORTEX_ACCESS_TOKEN_TTL": "60", "REDIS_URL": "redis://x:1/0"}
    )
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path / 'cortex.db'}"
    assert settings.access_token_ttl == 60 and settings.redis_url == "redis://x:1/0"


def test_secret_key_is_generated_once_with_mode_0600(tmp_path):
    first = Settings.from_env({}, data_dir=tmp_path).with_secret_key()
    second = Settings.from_env({}, data_dir=tmp_path).with_secret_key()
    assert len(first.secret_key) >= 32 and first.secret_key == second.secret_key
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]


def test_empty_secret_key_file_is_refused(tmp_path):
    (tmp_path / "secret.key").write_text("  \n")
    with pytest.raises(ValueError, match="no usable secret key"):
        Settings.from_env({}, data_dir=tmp_path).with_secret_key()


def _generate(directory, queue):
    queue.put(Settings.from_env({}, data_dir=directory).with_secret_key().secret_key)


def test_concurrent_first_starts_agree_on_one_key(tmp_path):
    context = multiprocessing.get_context("fork")
    for round_number in range(5):
        directory = tmp_path / str(round_number)
        queue = context.Queue()
        workers = [context.Process(target=_generate, args=(directory, queue)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(20)
        keys = {queue.get(timeout=5) for _ in workers}
        assert len(keys) == 1 and len(keys.pop()) >= 32


def test_webhook_settings_parse_and_refuse_bad_values(tmp_path):
    env = {"CORTEX_WEBHOOK_RETRY_SCHEDULE": "1, 2.5,0", "CORTEX_WEBHOOK_ALLOW_PRIVATE": "true",
           "CORTEX_WEBHOOK_WORKER": "false", "CORTEX_WEBHOOK_CONCURRENCY": "7", "CORTEX_WEBHOOK_TIMEOUT": "2"}
    settings = Settings.from_env(env, data_dir=tmp_path)
    assert settings.webhook_retry_schedule == (1.0, 2.5, 0.0)
    assert settings.outbound_allow_private is True and settings.webhook_worker is False  # the older name works
    assert (settings.webhook_concurrency, settings.webhook_timeout) == (7, 2.0)
    defaults = Settings.from_env({}, data_dir=tmp_path)
    assert defaults.webhook_retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert defaults.outbound_allow_private is False and defaults.webhook_worker is True
    assert Settings.from_env({"CORTEX_OUTBOUND_ALLOW_PRIVATE": "true"}, data_dir=tmp_path).outbound_allow_private
    both = {"CORTEX_OUTBOUND_ALLOW_PRIVATE": "false", "CORTEX_WEBHOOK_ALLOW_PRIVATE": "true"}
    assert Settings.from_env(both, data_dir=tmp_path).outbound_allow_private is False  # the new name wins
    assert Settings.from_env({"CORTEX_WEBHOOK_RETRY_SCHEDULE": "none"}, data_dir=tmp_path).webhook_retry_schedule == ()
    for name, value in [("CORTEX_WEBHOOK_RETRY_SCHEDULE", "1,x"), ("CORTEX_WEBHOOK_RETRY_SCHEDULE", "-1"),
                        ("CORTEX_WEBHOOK_CONCURRENCY", "0"), ("CORTEX_WEBHOOK_TIMEOUT", "0")]:
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: value}, data_dir=tmp_path)


def test_secret_keys_must_be_long_and_previous_keys_are_a_list(tmp_path):
    from cortex.settings import ConfigurationError

    with pytest.raises(ConfigurationError, match="CORTEX_SECRET_KEY must be at least 32 characters"):
        Settings.from_env({"CORTEX_SECRET_KEY": "x" * 31}, data_dir=tmp_path).with_secret_key()
    env = {"CORTEX_SECRET_KEY": "k" * 32, "CORTEX_SECRET_KEY_PREVIOUS": " " + "a" * 40 + " ,, " + "b" * 32}
    settings = Settings.from_env(env, data_dir=tmp_path).with_secret_key()
    assert settings.secret_key_previous == ("a" * 40, "b" * 32)
    env["CORTEX_SECRET_KEY_PREVIOUS"] = "short"
    with pytest.raises(ConfigurationError, match="CORTEX_SECRET_KEY_PREVIOUS must be at least 32"):
        Settings.from_env(env, data_dir=tmp_path).with_secret_key()
    with pytest.raises(ConfigurationError, match="DATABASE_URL must be"):
        Settings.from_env({"DATABASE_URL": "mysql://root@localhost/cortex"}, data_dir=tmp_path)


def test_previous_keys_still_decrypt_and_new_secrets_use_the_current_key():
    from cortex.lib import crypto

    old, new = "o" * 40, "n" * 40
    try:
        crypto.init_encryption(old)
        stored = crypto.encrypt("the secret")
        crypto.init_encryption(new, (old,))
        assert crypto.decrypt(stored) == "the secret"
        fresh = crypto.encrypt("another")
        rotated = crypto.reencrypt(stored)
        crypto.init_encryption(new)  # the previous key dropped
        assert crypto.decrypt(fresh) == "another" and crypto.decrypt(rotated) == "the secret"
        with pytest.raises(RuntimeError):
            crypto.decrypt(stored)
    finally:
        crypto.init_encryption("test-secret-key-0123456789abcdef")
