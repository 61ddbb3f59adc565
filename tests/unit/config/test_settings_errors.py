"""Every setting read from the environment is refused, when wrong, with a message naming its
variable and a valid value: new settings get this by deriving from `EnvSettings`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from sf_bridge.config import EnvSettings, Settings
from sf_bridge.crm.salesforce import SalesforceOptions
from sf_bridge.intake.options import IntakeOptions
from sf_bridge.worker_process import RunSettings
from sf_bridge.settings_errors import SettingsInvalid

CLASSES: list[type[EnvSettings]] = [Settings, RunSettings, IntakeOptions, SalesforceOptions]
GARBAGE = "%not-a-value%"


def checked_fields() -> list[tuple[type[EnvSettings], str, FieldInfo]]:
    """The fields whose type or validator refuses arbitrary text."""
    found = []
    for cls in CLASSES:
        for name, info in cls.model_fields.items():
            if info.annotation in (str, str | None, SecretStr | None) and not (
                cls is Settings and name in {"database_url", "sf_login_url", "sf_channel",
                                             "sf_api_version", "stripe_api_key",
                                             "stripe_api_base", "log_level",
                                             "provision_floor"}
            ):  # fmt: skip
                continue
            if info.annotation is Path:  # any text is a path
                continue
            found.append((cls, name, info))
    return found


@pytest.mark.parametrize(
    ("cls", "name", "info"),
    checked_fields(),
    ids=[f"{c.__name__}.{i.alias}" for c, _, i in checked_fields()],
)
def test_a_wrong_value_names_the_variable_and_a_valid_value(
    cls: type[EnvSettings], name: str, info: FieldInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert info.alias
    monkeypatch.setenv(info.alias, GARBAGE)
    with pytest.raises(SettingsInvalid) as raised:
        cls(_env_file=None)
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
