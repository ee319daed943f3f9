"""Settings (env, .env, secret key file) and log redaction."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
import structlog

from gateway.logs import configure_logging, redact_text
from gateway.settings import Settings, settings_table
from tests.conftest import ROOT


def test_settings_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAGATE_PORT", "9999")
    monkeypatch.setenv("WAGATE_DATABASE_URL", "postgresql://u:p@127.0.0.1/x")
    monkeypatch.setenv("PORT", "1")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.port == 9999
    assert settings.database_url is not None
    assert "p@" not in repr(settings)  # SecretStr


def test_settings_read_a_dotenv_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("WAGATE_LOG_FORMAT=json\nWAGATE_HOST=0.0.0.0\n")
    settings = Settings(_env_file=env)  # type: ignore[call-arg]
    assert settings.log_format == "json"
    assert settings.host == "0.0.0.0"


def test_invalid_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAGATE_PORT", "seventy")
    with pytest.raises(ValueError, match="port"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_secret_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "var")  # type: ignore[call-arg]
    first = settings.resolved_secret_key()
    path = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 48
    assert Settings(_env_file=None, data_dir=tmp_path / "var").resolved_secret_key() == first  # type: ignore[call-arg]
    given = Settings(_env_file=None, data_dir=tmp_path / "x", secret_key="given")  # type: ignore[call-arg]
    assert given.resolved_secret_key() == "given"
    assert not (tmp_path / "x" / "secret_key").exists()


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, _, _ in settings_table():
        assert f"`{name}`" in readme, f"{name} is missing from the README's settings table"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://wagate:s3cret@db:5432/x", "postgresql://wagate:***@db:5432/x"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
        ("GET /x?access_token=abc&y=1", "GET /x?access_token=***&y=1"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_log_lines_are_json_and_carry_no_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    try:
        log = structlog.get_logger("test")
        log.info("connecting", url="postgresql://u:hunter2@h/db", password="hunter2", user=7)
        logging.getLogger("lib").warning("dsn postgresql://u:hunter2@h/db failed")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert "hunter2" not in json.dumps(lines)
    assert lines[0]["password"] == "***"
    assert lines[0]["user"] == 7
    assert lines[0]["level"] == "info"
    assert lines[1]["event"] == "dsn postgresql://u:***@h/db failed"
