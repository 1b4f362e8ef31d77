"""The store's tables (SQLAlchemy Core): what the code queries.

The migrations in ``migrations/versions`` create them; a test checks that
the migrated database and these definitions agree. Times are UTC text
(``encoding.utc_text``), digests lower-case hex, JSON canonical text, and
ids are assigned by the store under its write lock (no sequences): revision
ids and audit sequence numbers are gapless, and a restore inserts them as
they were.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "ALL_TABLES",
    "artifacts",
    "audit_entries",
    "checkpoints",
    "instances",
    "metadata",
    "revisions",
    "tokens",
]

NAMING = {
    "pk": "pk_%(table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
}
metadata = MetaData(naming_convention=NAMING)

_TIME = String(32)
_DIGEST = String(64)
_NAME = String(128)

revisions = Table(
    "revisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("created_at", _TIME, nullable=False),
    Column("actor", _NAME, nullable=False),
    Column("config", Text, nullable=False),
    Column("config_sha256", _DIGEST, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("applied_at", _TIME, nullable=True),
)
Index("ix_revisions_status", revisions.c.status)

artifacts = Table(
    "artifacts",
    metadata,
    Column("name", _NAME, primary_key=True),
    Column("version", _NAME, primary_key=True),
    Column("sha256", _DIGEST, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", _TIME, nullable=False),
    Column("actor", _NAME, nullable=False),
)
Index("ix_artifacts_sha256", artifacts.c.sha256)

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("time", _TIME, nullable=False),
    Column("actor", _NAME, nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    Column("before_digest", _DIGEST, nullable=True),
    Column("after_digest", _DIGEST, nullable=True),
    Column("detail", Text, nullable=False),
    Column("leaf_hash", _DIGEST, nullable=False),
)
Index("ix_audit_entries_time", audit_entries.c.time)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("tree_size", Integer, nullable=False),
    Column("root_hash", _DIGEST, nullable=False),
    Column("time", _TIME, nullable=False),
    Column("signature", String(128), nullable=False),
    Column("key_id", _DIGEST, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("name", _NAME, primary_key=True),
    Column("token_sha256", _DIGEST, nullable=False, unique=True),
    Column("scopes", String(256), nullable=False),
    Column("created_at", _TIME, nullable=False),
    Column("revoked_at", _TIME, nullable=True),
)

flags = Table(
    "flags",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("updated_at", _TIME, nullable=False),
    Column("actor", _NAME, nullable=False),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", _NAME, nullable=False),
    Column("status", String(16), nullable=False),
    Column("spec", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("created_at", _TIME, nullable=False),
    Column("updated_at", _TIME, nullable=False),
    Column("actor", _NAME, nullable=False),
)
Index("ix_rollouts_model", rollouts.c.model)

slo_buckets = Table(
    "slo_buckets",
    metadata,
    Column("gateway", String(64), primary_key=True),
    Column("series", String(260), primary_key=True),
    Column("resolution", Integer, primary_key=True, autoincrement=False),
    Column("start", BigInteger, primary_key=True, autoincrement=False),
    Column("valid", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("degraded", BigInteger, nullable=False),
    Column("slow", BigInteger, nullable=False),
    Column("labelled", BigInteger, nullable=False, server_default="0"),  # accuracy: rows
    Column("wrong", BigInteger, nullable=False, server_default="0"),
    # The saving gateway's clock: the others read what changed since they last looked.
    Column("saved_at", Float, nullable=False, server_default="0"),
)
Index("ix_slo_buckets_saved_at", slo_buckets.c.saved_at)
Index("ix_slo_buckets_series", slo_buckets.c.series, slo_buckets.c.resolution, slo_buckets.c.start)

incidents = Table(
    "incidents",
    metadata,
    Column("gateway", String(64), primary_key=True),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("model", _NAME, nullable=False),
    Column("cause", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("opened_at", _TIME, nullable=False),
    Column("updated_at", _TIME, nullable=False),
    Column("data", Text, nullable=False),
)
Index("ix_incidents_state", incidents.c.state)

# The running gateways (heartbeats); not audited, not backed up: it says who runs now.
instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("address", String(256), nullable=False),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", _TIME, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("heartbeat_at", _TIME, nullable=False),
    Column("heartbeat_s", Float, nullable=False),
    Column("wakeups", String(16), nullable=False),  # "listen" or "poll"
)
Index("ix_instances_heartbeat_at", instances.c.heartbeat_at)

# Backups dump and restore these, in this order.
ALL_TABLES = (
    revisions,
    artifacts,
    tokens,
    flags,
    rollouts,
    slo_buckets,
    incidents,
    audit_entries,
    checkpoints,
)
