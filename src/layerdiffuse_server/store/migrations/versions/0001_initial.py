"""The schema of the first releases (its own ``schema_info`` version 1 or 2).

Each table is created only where it is missing, so a database made by those releases, which knew
nothing of Alembic, is adopted as it is: version 1 lacked only the workers table.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ADOPTABLE_SCHEMA_VERSIONS = (1, 2)


def _tables() -> list[tuple[str, list[sa.schema.SchemaItem], list[tuple[str, list[str]]]]]:
    """(name, columns and constraints, indexes) of every table, as those releases made them."""
    return [
        (
            "requests",
            [
                sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("id", sa.String(64), nullable=False, unique=True),
                sa.Column("app_id", sa.String(200), nullable=False),
                sa.Column("key_id", sa.String(64), nullable=False),
                sa.Column("state", sa.String(16), nullable=False),
                sa.Column("priority", sa.Integer, nullable=False),
                sa.Column("input", sa.JSON, nullable=False),
                sa.Column("created_at", sa.Float, nullable=False),
                sa.Column("started_at", sa.Float),
                sa.Column("completed_at", sa.Float),
                sa.Column("start_deadline", sa.Float),
                sa.Column("attempts", sa.Integer, nullable=False),
                sa.Column("worker_id", sa.String(100)),
                sa.Column("cancel_requested", sa.Boolean, nullable=False),
                sa.Column("webhook_url", sa.Text),
                sa.Column("status_code", sa.Integer),
                sa.Column("response", sa.JSON),
                sa.Column("error", sa.Text),
                sa.Column("error_type", sa.String(64)),
                sa.Column("metrics", sa.JSON),
            ],
            [
                ("requests_queue", ["state", "priority", "seq"]),
                ("requests_key", ["key_id", "seq"]),
                ("requests_completed", ["state", "completed_at"]),
            ],
        ),
        (
            "request_logs",
            [
                sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column(
                    "request_id", sa.String(64), sa.ForeignKey("requests.id", ondelete="CASCADE"), nullable=False
                ),
                sa.Column("message", sa.Text, nullable=False),
                sa.Column("level", sa.String(8), nullable=False),
                sa.Column("timestamp", sa.Float, nullable=False),
            ],
            [("request_logs_request", ["request_id", "seq"])],
        ),
        (
            "api_keys",
            [
                sa.Column("id", sa.String(64), primary_key=True),
                sa.Column("name", sa.String(200), nullable=False),
                sa.Column("admin", sa.Boolean, nullable=False),
                sa.Column("secret_hash", sa.String(128), nullable=False),
                sa.Column("created_at", sa.Float, nullable=False),
                sa.Column("revoked_at", sa.Float),
            ],
            [],
        ),
        (
            "files",
            [
                sa.Column("id", sa.String(64), primary_key=True),
                sa.Column("file_name", sa.String(255), nullable=False),
                sa.Column("content_type", sa.String(255), nullable=False),
                sa.Column("size", sa.Integer),
                sa.Column("key_id", sa.String(64)),
                sa.Column("request_id", sa.String(64)),
                sa.Column("created_at", sa.Float, nullable=False),
                sa.Column("expires_at", sa.Float),
                sa.Column("ready", sa.Boolean, nullable=False),
            ],
            [("files_request", ["request_id"]), ("files_expiry", ["expires_at"])],
        ),
        (
            "webhook_deliveries",
            [
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column(
                    "request_id",
                    sa.String(64),
                    sa.ForeignKey("requests.id", ondelete="CASCADE"),
                    nullable=False,
                    unique=True,
                ),
                sa.Column("url", sa.Text, nullable=False),
                sa.Column("state", sa.String(16), nullable=False),
                sa.Column("attempts", sa.Integer, nullable=False),
                sa.Column("next_attempt_at", sa.Float, nullable=False),
                sa.Column("last_error", sa.Text),
                sa.Column("delivered_at", sa.Float),
            ],
            [("webhook_due", ["state", "next_attempt_at"])],
        ),
        (
            "workers",
            [
                sa.Column("id", sa.String(64), primary_key=True),
                sa.Column("host", sa.String(255), nullable=False),
                sa.Column("pid", sa.Integer, nullable=False),
                sa.Column("model", sa.String(200), nullable=False),
                sa.Column("device", sa.String(64), nullable=False),
                sa.Column("state", sa.String(16), nullable=False),
                sa.Column("current_request", sa.String(64)),
                sa.Column("requests_done", sa.Integer, nullable=False),
                sa.Column("error", sa.Text),
                sa.Column("started_at", sa.Float, nullable=False),
                sa.Column("heartbeat_at", sa.Float, nullable=False),
            ],
            [],
        ),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table("schema_info"):
        version = op.get_bind().execute(sa.text("SELECT max(version) FROM schema_info")).scalar()
        if version not in ADOPTABLE_SCHEMA_VERSIONS:
            raise RuntimeError(
                f"the database has schema version {version}, which this release cannot upgrade; "
                "use a matching release or a new database"
            )
    for name, columns, indexes in _tables():
        if inspector.has_table(name):
            continue
        op.create_table(name, *columns)
        for index_name, index_columns in indexes:
            op.create_index(index_name, name, index_columns)


def downgrade() -> None:
    for name, _, _ in reversed(_tables()):
        op.drop_table(name)
