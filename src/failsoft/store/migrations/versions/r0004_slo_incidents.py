"""SLO buckets and incidents.

An SLO bucket is one series' counts over one minute (kept 3 days) or one
hour (kept 30 days): events, failed, degraded, slow. An incident is one row:
its model, cause, state and times as columns, and the whole of it (timeline,
impact, remediation items) as JSON. Both belong to the gateway that counted
or opened them (``gateway``: the id kept in its data directory), so
gateways sharing a store never overwrite each other's rows.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "slo_buckets",
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("series", sa.String(260), nullable=False),
        sa.Column("resolution", sa.Integer, nullable=False),
        sa.Column("start", sa.BigInteger, nullable=False),
        sa.Column("valid", sa.BigInteger, nullable=False),
        sa.Column("failed", sa.BigInteger, nullable=False),
        sa.Column("degraded", sa.BigInteger, nullable=False),
        sa.Column("slow", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("gateway", "series", "resolution", "start", name="pk_slo_buckets"),
    )
    op.create_table(
        "incidents",
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("gateway", "id", name="pk_incidents"),
    )
    op.create_index("ix_incidents_state", "incidents", ["state"])


def downgrade() -> None:
    op.drop_index("ix_incidents_state", table_name="incidents")
    op.drop_table("incidents")
    op.drop_table("slo_buckets")
