"""The control store: revisions, artifacts, admin tokens and a tamper-evident audit log.

SQLAlchemy 2 and Alembic over SQLite (embedded, the default) or PostgreSQL;
see ``store.py`` for the API, ``audit.py`` and ``verify.py`` for the log,
``backup.py`` for snapshots. Nothing here runs on the request path.
"""

from failsoft.store.audit import AuditEntry, Checkpoint, InclusionProof, check_inclusion
from failsoft.store.engine import StoreError, StoreUnreachable, default_url, redact
from failsoft.store.references import artifact_references
from failsoft.store.signing import load_public_key
from failsoft.store.store import Artifact, Revision, RevisionStatus, Store, Token
from failsoft.store.verify import Problem, VerifyResult

__all__ = [
    "Artifact",
    "AuditEntry",
    "Checkpoint",
    "InclusionProof",
    "Problem",
    "Revision",
    "RevisionStatus",
    "Store",
    "StoreError",
    "StoreUnreachable",
    "Token",
    "VerifyResult",
    "artifact_references",
    "check_inclusion",
    "default_url",
    "load_public_key",
    "redact",
]
