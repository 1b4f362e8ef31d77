"""The gateways sharing the store: one row per running instance, kept fresh by heartbeats.

Not audited and not backed up: a row says who is running now, and a row
whose heartbeats stopped is removed after a while by the gateways that are
still alive.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("address", sa.String(256), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("heartbeat_at", sa.String(32), nullable=False),
        sa.Column("heartbeat_s", sa.Float, nullable=False),
        sa.Column("wakeups", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_instances"),
    )
    op.create_index("ix_instances_heartbeat_at", "instances", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_instances_heartbeat_at", table_name="instances")
    op.drop_table("instances")
