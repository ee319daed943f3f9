"""Typed keys of everything the aiohttp application holds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from db.users import User
from gateway.ai.responder import AiResponder
from gateway.bus import EventBus
from gateway.cloud.service import CloudService
from gateway.cluster import SessionDirectory
from gateway.jira_bridge import JiraBridge
from gateway.metrics import Metrics
from gateway.outbox import OutboxWorker
from gateway.ratelimit import LoginLimiter
from gateway.security import PasswordService, TokenService
from gateway.settings import Settings
from gateway.webhooks import WebhookDispatcher
from sessions.supervisor import SessionSupervisor

ReadinessCheck = tuple[str, Callable[[], Awaitable[str | None]]]

SETTINGS = web.AppKey("settings", Settings)
DATABASE_URL = web.AppKey("database_url", str)
POOL = web.AppKey("pool", asyncpg.Pool)
TOKENS = web.AppKey("tokens", TokenService)
PASSWORDS = web.AppKey("passwords", PasswordService)
LOGIN_LIMITER = web.AppKey("login_limiter", LoginLimiter)
REGISTRY = web.AppKey("registry", CollectorRegistry)
METRICS = web.AppKey("metrics", Metrics)
BUS = web.AppKey("bus", EventBus)
SUPERVISOR = web.AppKey("supervisor", SessionSupervisor)
# The sessions of every gateway node: what the API and Socket.IO call (gateway/cluster.py).
SESSIONS = web.AppKey("sessions", SessionDirectory)
OUTBOX = web.AppKey("outbox", OutboxWorker)
CLOUD = web.AppKey("cloud", CloudService)
WEBHOOKS = web.AppKey("webhooks", WebhookDispatcher)
AI = web.AppKey("ai", AiResponder)
JIRA = web.AppKey("jira", JiraBridge)
# (name, check): each check answers None when ready, or why not.
READINESS = web.AppKey("readiness", list[ReadinessCheck])

# Per-request values.
REQUEST_USER = web.RequestKey("user", User)
REQUEST_ID = web.RequestKey("request_id", str)
