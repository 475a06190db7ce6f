"""Sealing config values at rest: AES-256-GCM with a key that lives only in the data dir.

A sealed blob is `v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`, bound by associated data to
where it is stored (app and release), so a blob copied elsewhere does not open. The key id lets a
server with the wrong data dir say so plainly instead of failing obscurely. Pure apart from
reading/creating the key file; any thread may call it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from berth.framework.errors import BerthError

KEY_FILE = "config.key"
_PREFIX = "v1"


def load_or_create_key(data_dir: Path) -> bytes:
    """Read DATA_DIR/config.key, creating it (0600, 32 random bytes) on first start."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != 32:
            raise BerthError(f"{path} is not a Berth config key (expected 32 bytes)") from None
        return key
    key = AESGCM.generate_key(bit_length=256)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"berth-config-key:" + key).hexdigest()[:12]

    def seal(self, plaintext: bytes, bound_to: str) -> str:
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, bound_to.encode())
        return f"{_PREFIX}:{self.key_id}:{base64.b64encode(sealed).decode()}"

    def open(self, blob: str, bound_to: str) -> bytes:
        prefix, key_id, payload = blob.split(":", 2)
        if prefix != _PREFIX:
            raise BerthError(f"unknown sealed format {prefix!r} at {bound_to}")
        if key_id != self.key_id:
            raise BerthError(
                f"config at {bound_to} was sealed with key {key_id}, but this server's key is"
                f" {self.key_id}: every API server must share the data dir's {KEY_FILE}"
            )
        raw = base64.b64decode(payload)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], bound_to.encode())
        except InvalidTag:
            raise BerthError(f"sealed config at {bound_to} failed its integrity check") from None
