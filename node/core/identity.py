"""The node's identity: its Ed25519 key pair and the node id derived from it.

The node id is the public key in did:key form without the `did:key:` prefix: multibase base58btc
(`z...`) of the multicodec `ed25519-pub` prefix (0xed 0x01) followed by the 32 key bytes. Anyone holding
a node id can therefore check the node's signatures without asking the node for its key, and
`did:key:<node id>` is a valid DID.

The node id is that of the node's first (genesis) key and never changes. After a key rotation
(node/core/keychain.py) the node signs with a newer key, named by its own key id (the same did:key
form); the chain of signed rotation entries leads from the node id to it, and is kept in `keys.json`
beside the key file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from node.core.errors import ConfigError, InvalidInput
from node.core.files import atomic_write_bytes

ED25519_MULTICODEC = b"\xed\x01"
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
CHAIN_FILE = "keys.json"  # beside the key file: the node id and the rotations that lead to the current key


def canonical_json(value: object) -> bytes:
    """The one canonical JSON of manifests, the log and rotation proofs: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 of `data` (leading zero bytes become '1')."""
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, rem = divmod(number, 58)
        out = _B58_ALPHABET[rem] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def b58decode(text: str) -> bytes:
    """Inverse of `b58encode`; raises InvalidInput on characters outside the alphabet."""
    number = 0
    for char in text:
        index = _B58_ALPHABET.find(char)
        if index < 0:
            raise InvalidInput(f"not base58: character {char!r}")
        number = number * 58 + index
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def node_id_for(public_key: Ed25519PublicKey) -> str:
    """The node id (`z6Mk...`) of an Ed25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "z" + b58encode(ED25519_MULTICODEC + raw)


def public_key_from_node_id(node_id: str) -> Ed25519PublicKey:
    """The Ed25519 public key a node id stands for; InvalidInput when it is not one."""
    if not node_id.startswith("z"):
        raise InvalidInput(f"not a node id: {node_id!r} (expected z6Mk...)")
    raw = b58decode(node_id[1:])
    if len(raw) != 34 or not raw.startswith(ED25519_MULTICODEC):
        raise InvalidInput(f"not a node id: {node_id!r} (not an Ed25519 did:key)")
    return Ed25519PublicKey.from_public_bytes(raw[2:])


@dataclass(frozen=True)
class Rotation:
    """A signed `node.key_rotated` log entry: the exact bytes and the retiring key's signature."""

    entry: bytes
    sig: bytes


class NodeIdentity:
    """The node's id, its current key pair, and the rotations from the node id's key to the current one.

    Every part of a running node holds the same object, so a rotation adopted by one (`adopt`) is
    the key all of them sign with from then on.
    """

    def __init__(self, private_key: Ed25519PrivateKey, node_id: str | None = None,
                 rotations: Sequence[Rotation] = ()) -> None:
        self.private_key = private_key
        self._node_id = node_id
        self.rotations: tuple[Rotation, ...] = tuple(rotations)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def node_id(self) -> str:
        """The node's id: that of its genesis key, unchanged by rotations."""
        return self._node_id or self.key_id

    @property
    def key_id(self) -> str:
        """The id (did:key form) of the key the node signs with now."""
        return node_id_for(self.public_key)

    @property
    def rotated(self) -> bool:
        return self.key_id != self.node_id

    @property
    def public_key_bytes(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of `message` with the current key (64 bytes)."""
        return self.private_key.sign(message)

    def adopt(self, private_key: Ed25519PrivateKey, rotations: Sequence[Rotation], node_id: str | None = None) -> None:
        """Sign with `private_key` from now on (after a rotation committed to the log)."""
        self._node_id = node_id or self.node_id
        self.private_key = private_key
        self.rotations = tuple(rotations)


def verify(node_id: str, message: bytes, signature: bytes) -> bool:
    """True when `signature` is the node's signature of `message`."""
    try:
        public_key_from_node_id(node_id).verify(signature, message)
    except (InvalidSignature, InvalidInput, ValueError):
        return False
    return True


def create_identity(path: Path) -> NodeIdentity:
    """Generate a key pair and write the private key to `path` (PEM, mode 0600, atomically)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write_bytes(path, pem, mode=0o600, exclusive=True)
    return NodeIdentity(key)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 key file; ConfigError (naming identity.key_file) when it is missing or not a key."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"identity.key_file: {path} does not exist (run `atrium init`)") from None
    except OSError as exc:
        raise ConfigError(f"identity.key_file: cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity.key_file: {path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity.key_file: {path} holds a {type(key).__name__}, not an Ed25519 key")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError(f"identity.key_file: {path} is readable by other users; run chmod 600 {path}")
    return key


def load_identity(path: Path) -> NodeIdentity:
    """Read the node key and, after a rotation, the key chain beside it (`keys.json`), checked from the
    node id to this key; ConfigError when either is missing, unreadable or does not fit the other."""
    key = read_private_key(path)
    chain_path = path.with_name(CHAIN_FILE)
    if not chain_path.exists():
        return NodeIdentity(key)
    from node.core.keychain import KeyChainError, finish_from_pending, key_periods, read_chain

    node_id, rotations = read_chain(chain_path)
    try:
        current = key_periods(node_id, rotations)[-1].key
    except KeyChainError as exc:
        raise ConfigError(f"{chain_path}: {exc.detail}") from None
    if node_id_for(key.public_key()) != current and finish_from_pending(path, current):
        key = read_private_key(path)  # a rotation was interrupted after its chain was written
    identity = NodeIdentity(key, node_id, rotations)
    if current != identity.key_id:
        raise ConfigError(f"{path} holds key {identity.key_id}, but {chain_path} says node {node_id} signs with "
                          f"{current}: restore the matching key file from a backup")
    return identity
