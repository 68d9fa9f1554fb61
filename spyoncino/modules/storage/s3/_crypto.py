"""Client-side encryption of copies (optional): AES-256-GCM with ``cryptography``.

With ``s3.encryption_key`` set (32 random bytes, base64, in the secrets file) every object is
``MAGIC || nonce (12 bytes) || AES-256-GCM(ciphertext || tag)``; the provider never sees the
picture. The nonce is derived from the key and the file's sha256 (HMAC-SHA256, first 12
bytes), so the same file always encrypts to the same bytes: a multipart upload resumed after a
restart matches the parts sent before it, and a retry overwrites the object with identical
bytes. A nonce repeats only for identical files, which then give identical ciphertexts (all an
observer learns is that two objects are the same file). Decrypt with
``python -m spyoncino.modules.storage.s3._crypto KEYFILE IN OUT``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import sys
from pathlib import Path

MAGIC = b"SPYC1"
NONCE = 12
TAG = 16
#: bytes an encrypted object has beyond its file
OVERHEAD = len(MAGIC) + NONCE + TAG
#: the ``x-amz-meta-encryption`` value of encrypted objects
SCHEME = "aes-256-gcm"


def load_key(text: str) -> bytes:
    """The 32-byte key from its base64 text; ValueError naming what is wrong."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("not base64 (make one with: openssl rand -base64 32)") from e
    if len(key) != 32:
        raise ValueError(f"{len(key)} bytes; AES-256 needs 32 (openssl rand -base64 32)")
    return key


def nonce_for(key: bytes, sha256_hex: str) -> bytes:
    return hmac.new(key, b"nonce:" + sha256_hex.encode(), hashlib.sha256).digest()[:NONCE]


def encrypt(key: bytes, data: bytes, sha256_hex: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = nonce_for(key, sha256_hex)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, data, MAGIC)


def decrypt(key: bytes, blob: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not blob.startswith(MAGIC):
        raise ValueError("not an object encrypted by spyoncino")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE]
    return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE :], MAGIC)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m spyoncino.modules.storage.s3._crypto KEYFILE IN OUT")
        return 2
    key = load_key(Path(argv[0]).read_text())
    Path(argv[2]).write_bytes(decrypt(key, Path(argv[1]).read_bytes()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
