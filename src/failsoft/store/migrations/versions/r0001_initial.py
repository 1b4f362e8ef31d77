"""The first control store: revisions, artifacts, tokens and the audit log.

The audit tables are append-only: triggers refuse UPDATE and DELETE (and,
on PostgreSQL, TRUNCATE) on ``audit_entries`` and ``checkpoints``, so an
edit needs someone who can change the schema, and ``audit verify`` then
catches it. The same revision runs on SQLite and PostgreSQL.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

APPEND_ONLY = ("audit_entries", "checkpoints")


def _time() -> sa.String:
    return sa.String(32)


def upgrade() -> None:
    op.create_table(
        "revisions",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("config_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("applied_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_revisions"),
    )
    op.create_index("ix_revisions_status", "revisions", ["status"])
    op.create_table(
        "artifacts",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_artifacts"),
    )
    op.create_index("ix_artifacts_sha256", "artifacts", ["sha256"])
    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("time", _time(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("before_digest", sa.String(64), nullable=True),
        sa.Column("after_digest", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("leaf_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_entries"),
    )
    op.create_index("ix_audit_entries_time", "audit_entries", ["time"])
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("tree_size", sa.Integer, nullable=False),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("time", _time(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
    )
    op.create_table(
        "tokens",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(256), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("revoked_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_tokens"),
        sa.UniqueConstraint("token_sha256", name="uq_tokens_token_sha256"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION failsoft_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP; END $$"
        )
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION failsoft_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION failsoft_append_only()"
            )
    else:
        for table in APPEND_ONLY:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
                )


def downgrade() -> None:
    for table in ("tokens", "checkpoints", "audit_entries", "artifacts", "revisions"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION failsoft_append_only()")
