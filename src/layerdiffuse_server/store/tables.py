"""The schema at the newest migration, as SQLAlchemy Core tables: what the queries are written
against, for SQLite and PostgreSQL alike. The schema itself is made and changed only by the
migrations (``migrations/versions``); a test checks that they arrive at exactly these tables.

Times are unix seconds (floats): comparable in SQL on every dialect and free of time-zone loss.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

requests = Table(
    "requests",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("app_id", String(200), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("input", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("completed_at", Float),
    Column("start_deadline", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker_id", String(100)),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("webhook_url", Text),
    Column("status_code", Integer),
    Column("response", JSON),
    Column("error", Text),
    Column("error_type", String(64)),
    Column("metrics", JSON),
    Column("lease_token", String(64)),
    Column("lease_expires_at", Float),
    Column("batch_key", String(200)),
    Column("batch_size", Integer),
    Column("lost_runs", Integer, nullable=False, default=0),
    Column("solo", Boolean, nullable=False, default=False),
)
Index("requests_queue", requests.c.state, requests.c.priority, requests.c.seq)
Index("requests_leases", requests.c.state, requests.c.lease_expires_at)
Index("requests_key", requests.c.key_id, requests.c.seq)
Index("requests_completed", requests.c.state, requests.c.completed_at)

request_logs = Table(
    "request_logs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("requests.id", ondelete="CASCADE"), nullable=False),
    Column("message", Text, nullable=False),
    Column("level", String(8), nullable=False),
    Column("timestamp", Float, nullable=False),
)
Index("request_logs_request", request_logs.c.request_id, request_logs.c.seq)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("admin", Boolean, nullable=False, default=False),
    Column("secret_hash", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("file_name", String(255), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size", Integer),
    Column("key_id", String(64)),
    Column("request_id", String(64)),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("ready", Boolean, nullable=False, default=False),
)
Index("files_request", files.c.request_id)
Index("files_expiry", files.c.expires_at)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("requests.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("url", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_error", Text),
    Column("delivered_at", Float),
)
Index("webhook_due", webhook_deliveries.c.state, webhook_deliveries.c.next_attempt_at)

# One row per worker process, rewritten by its heartbeat: what ``layerdiffuse status`` and the
# metrics show. A row whose heartbeat stopped is a worker that died or was stopped.
workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("device", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # loading, ready, busy, failed, stopped
    Column("current_request", String(64)),
    Column("requests_done", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("scope", String(200)),
)
