"""The one settings object: every knob wagate has, read from `WAGATE_*` variables and `.env`.

Nothing else in the code base reads the environment. `run.py` builds a `Settings` and passes it
down; tests build their own.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_KEY_FILE = "secret_key"


class Settings(BaseSettings):
    """wagate's configuration. Each field is the `WAGATE_`-prefixed variable of the same name."""

    model_config = SettingsConfigDict(
        env_prefix="WAGATE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Field(
        default=Path("var"),
        description="Where wagate keeps its state: embedded PostgreSQL, secret key, media.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL. Unset: an embedded PostgreSQL under DATA_DIR/pg is started.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis URL (redis://host:6379/0). Set it when several gateway processes "
        "serve one database: Socket.IO events then reach clients connected to any of them.",
    )
    db_pool_min: int = Field(default=2, ge=1, description="Smallest size of the connection pool.")
    db_pool_max: int = Field(default=10, ge=1, description="Largest size of the connection pool.")
    db_connect_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to keep retrying the database at start-up before giving up.",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP server.")
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs tokens and encrypts secrets at rest. Unset: generated into "
        "DATA_DIR/secret_key (mode 0600) on first start.",
    )
    admin_email: str = Field(
        default="admin@wagate.local", description="E-mail of the admin created on first start."
    )
    admin_password: SecretStr | None = Field(
        default=None,
        description="Password of the admin created on first start. Unset: one is generated "
        "and printed once.",
    )
    token_ttl_hours: float = Field(default=12.0, gt=0, description="Lifetime of access tokens.")
    login_rate_limit: str = Field(
        default="10/minute",
        description="Failed logins allowed per client IP and per e-mail (limits syntax).",
    )
    trust_forwarded_for: bool = Field(
        default=False,
        description="Take the client IP from X-Forwarded-For (only behind your own proxy).",
    )
    max_body_mb: float = Field(
        default=1.0, gt=0, description="Largest request body accepted by JSON routes, in MB."
    )
    log_format: Literal["kv", "json"] = Field(
        default="kv", description="Log lines as key=value (kv) or JSON objects (json)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )
    driver: Literal["neonize", "fake"] = Field(
        default="neonize",
        description="WhatsApp Web driver: the real neonize library, or the fake for tests/demos.",
    )

    max_sessions_per_user: int = Field(
        default=5, ge=0, description="WhatsApp accounts an operator may add (admins too)."
    )
    sessions_per_worker: int = Field(
        default=1,
        ge=1,
        le=200,
        description="Sessions hosted by one worker process. 1 isolates crashes fully; more "
        "saves memory (connects inside a worker are then serialized).",
    )
    qr_first_seconds: float = Field(
        default=60.0, gt=0, description="Validity of the first QR code (whatsmeow: 60 s)."
    )
    qr_next_seconds: float = Field(
        default=20.0, gt=0, description="Validity of each following QR code (whatsmeow: 20 s)."
    )
    qr_codes: int = Field(
        default=6, ge=1, description="QR codes shown before the pairing window closes."
    )
    reconnect_base_seconds: float = Field(
        default=1.0, gt=0, description="First delay before reconnecting a session."
    )
    reconnect_max_seconds: float = Field(
        default=60.0, gt=0, description="Longest delay between reconnect attempts."
    )
    worker_restart_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest delay before restarting a crashed worker."
    )
    worker_heartbeat_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds without an answer after which a worker is killed and restarted.",
    )
    spool_sync: Literal["fsync", "flush"] = Field(
        default="fsync",
        description="How each WhatsApp event is made durable in a worker's spool before it is "
        "processed: fsync (survives power loss) or flush (survives process crashes).",
    )

    media_dir: Path | None = Field(
        default=None, description="Where media files are stored by content hash (DATA_DIR/media)."
    )
    media_max_mb: float = Field(
        default=100.0,
        gt=0,
        description="Largest attachment downloaded; bigger ones are kept as `too_large`.",
    )
    keep_revoked: bool = Field(
        default=True,
        description="Keep the original of a message deleted for everyone, for the owner's audit.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def pg_dir(self) -> Path:
        """Data directory of the embedded PostgreSQL."""
        return self.data_dir / "pg"

    @property
    def media_path(self) -> Path:
        return (self.media_dir or self.data_dir / "media").expanduser().absolute()

    @property
    def uses_embedded_db(self) -> bool:
        return self.database_url is None

    def ensure_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def resolved_secret_key(self) -> str:
        """The secret key: from the environment, else from DATA_DIR/secret_key (created once)."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value()
        self.ensure_data_dir()
        path = self.data_dir / SECRET_KEY_FILE
        if not path.exists():
            # Write a private temp file, then link it into place: atomic, and a second process
            # starting at the same moment either wins the link or reads the winner's key.
            tmp = path.with_name(f".{SECRET_KEY_FILE}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_urlsafe(48) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise RuntimeError(f"{path} is empty; delete it or set WAGATE_SECRET_KEY")
        return key


def max_body_bytes(settings: Settings) -> int:
    return int(settings.max_body_mb * 1024 * 1024)


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) of every setting, for the README and `run.py settings`."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default is None else str(default)
        rows.append((f"WAGATE_{name.upper()}", shown, field.description or ""))
    return rows
