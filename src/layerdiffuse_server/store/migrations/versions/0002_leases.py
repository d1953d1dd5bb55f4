"""Leases and batch keys on requests, for many workers sharing one queue.

A running request is held under a lease (token + expiry); a request whose worker was lost while it
ran in a batch runs alone next time (``solo``), and only runs lost alone count (``lost_runs``).
Workers record the process scope they run in, so a neighbour can tell when one of them died.
The first releases' ``schema_info`` table gives way to Alembic's own version table.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both dialects: no table is copied, so nothing else moves.
    op.add_column("requests", sa.Column("lease_token", sa.String(64)))
    op.add_column("requests", sa.Column("lease_expires_at", sa.Float))
    op.add_column("requests", sa.Column("batch_key", sa.String(200)))
    op.add_column("requests", sa.Column("batch_size", sa.Integer))
    op.add_column("requests", sa.Column("lost_runs", sa.Integer, nullable=False, server_default="0"))
    op.add_column("requests", sa.Column("solo", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("requests_leases", "requests", ["state", "lease_expires_at"])
    op.add_column("workers", sa.Column("scope", sa.String(200)))
    # Requests a first release left running had no lease: expired now, the next reclaim takes them.
    op.execute("UPDATE requests SET lease_expires_at = 0 WHERE state = 'IN_PROGRESS'")
    if sa.inspect(op.get_bind()).has_table("schema_info"):
        op.drop_table("schema_info")


def downgrade() -> None:
    with op.batch_alter_table("workers") as table:
        table.drop_column("scope")
    op.drop_index("requests_leases", "requests")
    with op.batch_alter_table("requests") as table:
        for column in ("solo", "lost_runs", "batch_size", "batch_key", "lease_expires_at", "lease_token"):
            table.drop_column(column)
