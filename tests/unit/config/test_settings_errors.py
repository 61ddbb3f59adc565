"""Every setting read from the environment is refused, when wrong, with a message naming its
variable and a valid value: new settings get this by being a field of `Settings` or of one of
its sections."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from sf_bridge.config import Settings, section_of
from sf_bridge.settings_errors import SettingsInvalid

GARBAGE = "%not-a-value%"
# Plain-text settings whose validator refuses arbitrary text.
CHECKED_TEXT = {"database_url", "sf_login_url", "sf_channel", "sf_api_version",
                "stripe_api_key", "stripe_api_base", "log_level", "provision_floor"}  # fmt: skip


def checked_fields() -> list[tuple[str, str, FieldInfo]]:
    """The fields (sections' fields included) whose type or validator refuses arbitrary text,
    with the section each is in ("" for a plain setting)."""
    found = []
    for section_name, info in Settings.model_fields.items():
        section = section_of(info)
        fields = section.model_fields.items() if section else [(section_name, info)]
        for name, field in fields:
            if field.annotation in (str, str | None, SecretStr | None) and not (
                section is None and name in CHECKED_TEXT
            ):
                continue
            if field.annotation is Path:  # any text is a path
                continue
            found.append((section_name if section else "", name, field))
    return found


def test_the_sections_are_read_from_their_flat_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_BRIDGE_STREAM_BATCH", "50")
    monkeypatch.setenv("SF_BRIDGE_SF_TIMEOUT", "7")
    monkeypatch.setenv("SF_BRIDGE_WORKER_POLL", "0.5")
    monkeypatch.setenv("INTAKE", "not JSON")  # a section is never read whole
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.intake.batch_size == 50
    assert settings.salesforce_client.request_timeout == 7.0
    assert settings.run.worker_poll_seconds == 0.5
    assert settings.with_overrides(port="9000").intake.batch_size == 50


def test_a_dotenv_file_fills_the_sections_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SF_BRIDGE_STREAM_BATCH=9\nSF_BRIDGE_SF_TIMEOUT=7\n")
    monkeypatch.setenv("SF_BRIDGE_STREAM_BATCH", "50")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.intake.batch_size == 50
    assert settings.salesforce_client.request_timeout == 7.0


@pytest.mark.parametrize(
    ("section", "name", "info"),
    checked_fields(),
    ids=[f"{s or 'Settings'}.{i.alias}" for s, _, i in checked_fields()],
)
def test_a_wrong_value_names_the_variable_and_a_valid_value(
    section: str, name: str, info: FieldInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert info.alias
    monkeypatch.setenv(info.alias, GARBAGE)
    with pytest.raises(SettingsInvalid) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    [problem] = raised.value.problems
    assert problem.startswith(info.alias), problem
    assert "Set it" in problem or "Correct it" in problem, problem
    secret = info.annotation is not None and "SecretStr" in str(info.annotation)
    assert (GARBAGE in problem) != secret, problem
    assert "Input should" not in problem
    assert "pydantic" not in problem


def test_a_password_in_a_url_is_not_shown() -> None:
    with pytest.raises(SettingsInvalid) as raised:
        Settings(_env_file=None, DATABASE_URL="mysqlx://user:s3cret@db/x")  # type: ignore[call-arg]
    assert "s3cret" not in raised.value.user_message()
    assert "user:***@db" in raised.value.user_message()


@pytest.mark.parametrize("key", ["sk_test_abc", "sk_live_abc", "rk_test_abc", "rk_live_abc"])
def test_secret_and_restricted_stripe_keys_are_accepted(key: str) -> None:
    settings = Settings(_env_file=None, STRIPE_API_KEY=key)  # type: ignore[call-arg]
    assert settings.stripe_api_key is not None
    assert settings.stripe_api_key.get_secret_value() == key


@pytest.mark.parametrize(
    ("key", "words"),
    [("pk_live_abc", "publishable key"), ("whsec_abc", "not a Stripe secret key")],
)
def test_other_stripe_keys_are_refused_without_showing_them(key: str, words: str) -> None:
    with pytest.raises(SettingsInvalid) as raised:
        Settings(_env_file=None, STRIPE_API_KEY=key)  # type: ignore[call-arg]
    assert words in raised.value.user_message()
    assert key not in raised.value.user_message()


def test_command_line_values_are_checked_like_the_environment() -> None:
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    assert base.with_overrides(port="9000").port == 9000
    with pytest.raises(SettingsInvalid) as raised:
        base.with_overrides(flags={"sf_channel": "--channel"}, sf_channel="events")
    assert raised.value.problems[0].startswith("SF_CHANNEL='events' (from --channel) is not")
