"""The ed25519 key that signs audit checkpoints, kept in the data directory.

``audit-key.pem`` holds the private key (PKCS#8, created mode 0600 on first
use; two processes creating it at once agree on one file), ``audit-key.pub``
the public key anyone may hold to check checkpoints and inclusion proofs.
A key is named by its id: the first 16 hex digits of SHA-256 of the raw
public key.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from failsoft.store.engine import StoreError

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "SigningKey",
    "key_id",
    "load_or_create_key",
    "load_public_key",
    "signature_valid",
]

log = logging.getLogger("failsoft.audit")

PRIVATE_KEY_FILE = "audit-key.pem"
PUBLIC_KEY_FILE = "audit-key.pub"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_valid(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """A public key from PEM text or 64 hex digits (the raw key)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        else:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(raw.decode().strip()))
    except ValueError as error:
        raise StoreError(f"not an ed25519 public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise StoreError("not an ed25519 public key")
    return key


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Write ``path`` whole or not at all; False when another process was first."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return True


def load_or_create_key(data_dir: Path) -> SigningKey:
    path = Path(data_dir) / PRIVATE_KEY_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            private = Ed25519PrivateKey.generate()
            pem = private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            if _write_new(path, pem, 0o600):
                key = SigningKey(private)
                _write_new(path.with_name(PUBLIC_KEY_FILE), key.public_pem(), 0o644)
                log.info("audit signing key created", extra={"key_id": key.key_id})
                return key
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("audit signing key is readable by others", extra={"path": str(path)})
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise StoreError(f"audit signing key {path}: {error}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise StoreError(f"audit signing key {path} is not an ed25519 key")
    key = SigningKey(loaded)
    public_path = path.with_name(PUBLIC_KEY_FILE)
    if not public_path.exists():
        _write_new(public_path, key.public_pem(), 0o644)
    return key
