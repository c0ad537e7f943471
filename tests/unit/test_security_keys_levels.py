"""Pure logic of the API key and log level procedures: configuration that cannot work is
refused with the variable's meaning, secrets are masked in messages, and the ini and YAML
edits change one value and nothing else."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from remediation.security import api_keys, log_levels
from remediation.settings.api_keys import ApiKey, ApiKeySettings
from remediation.settings.monitoring import LogLevelApp, MonitoringSettings

ROTATABLE = {
    "name": "shop",
    "file": "/run/secrets/shop",
    "validate_url": "https://api.example.com/me",
    "rotatable": True,
    "generate_command": "provider-cli new-key --json",
    "revoke_command": ["provider-cli", "revoke"],
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"env": "X_KEY"}, "exactly one of env and file"),
        ({"file": None, "env": "X_KEY"}, "only a file key can be rotated"),
        ({"generate_command": None}, "one of generate_command, generate_url"),
        ({"revoke_url": "https://api.example.com/revoke"}, "one of revoke_command, revoke_url"),
        ({"validate_url": None}, "set validate_url"),
        ({"header_format": "Bearer"}, "must contain {key}"),
        ({"validate_url": "ftp://x"}, "not an http"),
        ({"expected_status": [700]}, "not HTTP statuses"),
    ],
)
def test_api_key_configuration_that_cannot_work_is_refused(
    changes: dict[str, object], message: str
) -> None:
    """Each impossible key configuration fails validation naming what is wrong."""
    with pytest.raises(ValidationError, match=message):
        ApiKey.model_validate({**ROTATABLE, **changes})


def test_commands_are_argv_lists_and_the_workers_own_settings_are_not_keys() -> None:
    """A command string is shlex-split (no shell); REMEDIATION_ variables and duplicate names
    are refused."""
    key = ApiKey.model_validate(ROTATABLE)
    assert key.generate_command == ["provider-cli", "new-key", "--json"]
    with pytest.raises(ValidationError, match="the worker's own setting"):
        ApiKey(name="x", env="REMEDIATION_SIGNING_KEY")
    with pytest.raises(ValidationError, match="used twice"):
        ApiKeySettings.model_validate(
            {"keys": [{"name": "a", "env": "A"}, {"name": "A", "env": "B"}]}
        )
    with pytest.raises(ValidationError, match="used twice"):
        MonitoringSettings.model_validate(
            {"apps": [{"name": "s", "redis_key": "k"}, {"name": "S", "redis_key": "k"}]}
        )


def test_an_app_needs_somewhere_to_set_its_level() -> None:
    """Neither a Redis key nor a file, a file without its key, an ini key without a section."""
    for bad, message in (
        ({}, "set redis_key, file or both"),
        ({"file": "/etc/a.yaml"}, "file needs file_key"),
        ({"file": "/etc/a.ini", "file_format": "ini", "file_key": "level"}, "section.option"),
    ):
        with pytest.raises(ValidationError, match=message):
            LogLevelApp.model_validate({"name": "a", **bad})


def test_scrub_masks_every_given_secret_and_bounds_the_text() -> None:
    """Both keys are masked wherever they appear; the message is cut at MAX_MESSAGE."""
    text = api_keys.scrub(
        "old=abc123secret new: zz9-new-key and abc123secret", "abc123secret", "zz9-new-key"
    )
    assert "abc123secret" not in text and "zz9-new-key" not in text and text.count("***") == 3
    assert len(api_keys.scrub("x" * 5000)) <= api_keys.MAX_MESSAGE + 3


def test_ini_edit_touches_one_option_of_one_section() -> None:
    """The option is replaced in its own section only; an absent section is an error."""
    text = "[a]\nlevel = INFO ; note\n\n[b]\nlevel = ERROR\n"
    before, after = log_levels.ini_edit(text, "a.level", "DEBUG", "f.ini")
    assert before == "INFO ; note" and after == "[a]\nlevel = DEBUG\n\n[b]\nlevel = ERROR\n"
    with pytest.raises(log_levels.LevelFileError, match=r"no section \[c\]"):
        log_levels.ini_edit(text, "c.level", "DEBUG", "f.ini")


def test_yaml_edit_keeps_comments_and_refuses_a_missing_parent() -> None:
    """A nested key is set with the comments around it kept; a path through a missing
    mapping is an error, not a new structure."""
    text = "# top\napp:\n  # the level\n  level: INFO\n"
    before, after = log_levels.yaml_edit(text, "app.level", "DEBUG", "f.yaml")
    assert before == "INFO" and after == "# top\napp:\n  # the level\n  level: DEBUG\n"
    with pytest.raises(log_levels.LevelFileError, match="no mapping at"):
        log_levels.yaml_edit(text, "logging.root.level", "DEBUG", "f.yaml")
    with pytest.raises(log_levels.LevelFileError, match="is empty"):
        log_levels.yaml_edit("# nothing yet\n", "level", "DEBUG", "f.yaml")
