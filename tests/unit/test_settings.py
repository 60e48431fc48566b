"""Settings: every variable in .example_env is a real setting, and bad values are explained."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.settings import PROJECT_ROOT, Settings, describe_validation_error

pytestmark = pytest.mark.unit


def example_env_names() -> set[str]:
    names = set()
    for line in (PROJECT_ROOT / ".example_env").read_text().splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("=", 1)[0].lower())
    return names


def test_example_env_lists_every_setting_and_nothing_else():
    assert example_env_names() == set(Settings.model_fields)


def test_example_env_values_are_valid_defaults():
    values = {}
    for line in (PROJECT_ROOT / ".example_env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key.lower()] = value
    settings = Settings(_env_file=None, **values)
    assert settings.postgres_port == 15432 and settings.redis_port == 16379
    assert settings.redis_key_delimiter == ";;"
    assert settings.rest_url("binance") == "https://api.binance.com"


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("redis_port", "70000", "REDIS_PORT"),
        ("log_level", "LOUD", "LOG_LEVEL"),
        ("rest_concurrency", "0", "REST_CONCURRENCY"),
    ],
)
def test_bad_values_are_one_line_naming_the_variable(field, value, fragment):
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, **{field: value})
    line = describe_validation_error(raised.value)
    assert fragment in line and "\n" not in line


def test_password_is_never_echoed():
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, redis_password=["not", "a", "string"])
    assert "(got" not in describe_validation_error(raised.value)


def test_the_redis_url_quotes_the_password():
    settings = Settings(_env_file=None, redis_password="p@ss/w:rd")
    assert settings.redis_url.startswith("redis://:p%40ss%2Fw%3Ard@")


@pytest.mark.parametrize("field", ["local_data_dir", "log_dir"])
def test_relative_folders_are_the_projects_wherever_the_command_runs(field, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert getattr(Settings(_env_file=None, **{field: "somewhere/data"}), field) == (
        PROJECT_ROOT / "somewhere" / "data"
    )
    assert getattr(Settings(_env_file=None, **{field: str(tmp_path)}), field) == tmp_path
