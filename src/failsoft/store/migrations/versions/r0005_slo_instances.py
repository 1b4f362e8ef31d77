"""SLO budgets summed over the gateways sharing a store, and the accuracy objective.

Each gateway still writes its own buckets; ``saved_at`` (the saving
gateway's clock, epoch seconds) lets the others read only what changed since
they last looked, and an index on (series, resolution, start) lets them sum
one bucket over every gateway. Rows saved before this revision have
``saved_at`` 0: a gateway's first read takes every bucket in its windows.
``labelled`` and ``wrong`` count the rows judged by feedback in a bucket
and those predicted wrong (the accuracy objective).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    for name in ("labelled", "wrong"):
        op.add_column(
            "slo_buckets", sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
        )
    op.add_column(
        "slo_buckets", sa.Column("saved_at", sa.Float, nullable=False, server_default="0")
    )
    op.create_index("ix_slo_buckets_saved_at", "slo_buckets", ["saved_at"])
    op.create_index("ix_slo_buckets_series", "slo_buckets", ["series", "resolution", "start"])


def downgrade() -> None:
    op.drop_index("ix_slo_buckets_series", table_name="slo_buckets")
    op.drop_index("ix_slo_buckets_saved_at", table_name="slo_buckets")
    with op.batch_alter_table("slo_buckets") as batch:
        batch.drop_column("saved_at")
        batch.drop_column("wrong")
        batch.drop_column("labelled")
