"""Key rotation: how a node moves to a new signing key while its node id stays the same.

The node id is the id of the node's first (genesis) key. A rotation is a `node.key_rotated` entry of
the node's own federation log, signed by the key it retires, whose body names the new key and carries
the new key's proof of possession (its signature over the node id, the new key and the entry's seq):
nobody can rotate a node to a key they do not hold, and nobody but the holder of the current key can
rotate it at all. The rotation entries, in order, are the **key chain**: starting from the key the
node id stands for, each one hands signing over to the next key. Anyone can check a chain with the
node id alone (`key_periods`).

Validity: the genesis key signs the entries from seq 1 up to and including the first rotation entry;
a key introduced at seq r signs the entries after r, up to and including the rotation that retires
it. A follower therefore knows, for every entry, the one key that may have signed it.

On disk, beside the key file: `keys.json` (the node id and the rotation entries, so the node keeps
its id and its chain even without its database), and during a rotation `node.key.next`, the new key,
written before the rotation commits and moved over the key file after (`finish_rotation`). A node
that starts with a committed rotation not yet moved into place completes it (`complete_rotation`);
a `node.key.next` whose key no committed entry names is left alone and never signs anything.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import col, select

from node.core.errors import ConfigError, InvalidInput
from node.core.files import atomic_write_bytes
from node.core.identity import (CHAIN_FILE, NodeIdentity, Rotation, canonical_json, node_id_for,
                                public_key_from_node_id, read_private_key, verify)

log = logging.getLogger(__name__)

ROTATION_KIND = "node.key_rotated"
PROOF_PURPOSE = "atrium key rotation"
PENDING_SUFFIX = ".next"
MAX_ROTATIONS = 1000  # a chain longer than this is refused as hostile


class KeyChainError(InvalidInput):
    """A rotation entry or key chain that does not lead from the node id to the key it claims."""


@dataclass(frozen=True)
class KeyPeriod:
    """One key of a node and the part of its log it signs (seqs `from_seq` to `until_seq`, inclusive)."""

    key: str
    from_seq: int  # 1 for the genesis key, else the rotation's seq + 1
    until_seq: int | None  # the seq of the rotation that retired it; None while current
    since: str | None  # the time of the rotation that introduced it (None for the genesis key)
    until: str | None  # the time of the rotation that retired it
    rotation: Rotation | None  # the entry that introduced it

    def as_json(self) -> dict[str, Any]:
        return {"id": self.key, "did": f"did:key:{self.key}", "current": self.until_seq is None,
                "validFrom": {"seq": self.from_seq, "time": self.since},
                "validUntil": None if self.until_seq is None else {"seq": self.until_seq, "time": self.until},
                "rotation": None if self.rotation is None else rotation_json(self.rotation)}


def rotation_json(rotation: Rotation) -> dict[str, str]:
    """A rotation as it travels in node documents, manifests and keys.json: the entry's bytes as a
    string (exact after UTF-8 encoding) and the signature in base64."""
    return {"entry": rotation.entry.decode(), "sig": base64.b64encode(rotation.sig).decode()}


def rotation_from_json(value: Any) -> Rotation:
    if not isinstance(value, dict) or not isinstance(value.get("entry"), str) or not isinstance(value.get("sig"), str):
        raise KeyChainError("a rotation must be {\"entry\": <string>, \"sig\": <base64>}")
    try:
        return Rotation(value["entry"].encode(), base64.b64decode(value["sig"], validate=True))
    except (binascii.Error, ValueError):
        raise KeyChainError("a rotation's sig is not base64") from None


def proof_message(node_id: str, new_key: str, seq: int) -> bytes:
    """What the new key signs to prove it is held by the node that rotates to it."""
    return canonical_json({"newKey": new_key, "node": node_id, "purpose": PROOF_PURPOSE, "seq": seq})


def rotation_body(node_id: str, old_key: str, new_key: Ed25519PrivateKey, seq: int) -> dict[str, Any]:
    """The body of the rotation entry `seq` from `old_key` to `new_key`, with the proof of possession."""
    new_id = node_id_for(new_key.public_key())
    proof = new_key.sign(proof_message(node_id, new_id, seq))
    return {"newKey": new_id, "previousKey": old_key, "proof": base64.b64encode(proof).decode()}


def check_rotation(fields: dict[str, Any], signer: str) -> str:
    """The new key a rotation entry (already checked to be signed by `signer`) introduces;
    KeyChainError when it does not name the signer as the key it retires or lacks a valid proof."""
    body = fields.get("body")
    seq = fields.get("seq")
    if not isinstance(body, dict) or not isinstance(seq, int):
        raise KeyChainError(f"rotation entry {seq}: no body")
    new_key, previous, proof = body.get("newKey"), body.get("previousKey"), body.get("proof")
    if previous != signer:
        raise KeyChainError(f"rotation entry {seq} retires {previous!r}, but {signer} signed it")
    if not isinstance(new_key, str) or not isinstance(proof, str):
        raise KeyChainError(f"rotation entry {seq}: newKey and proof are required")
    try:
        public_key_from_node_id(new_key)
        signature = base64.b64decode(proof, validate=True)
    except (InvalidInput, binascii.Error, ValueError):
        raise KeyChainError(f"rotation entry {seq}: newKey is not a key id or proof is not base64") from None
    if new_key == signer:
        raise KeyChainError(f"rotation entry {seq} rotates {signer} to itself")
    if not verify(new_key, proof_message(str(fields.get("node")), new_key, seq), signature):
        raise KeyChainError(f"rotation entry {seq}: no valid proof of possession of {new_key} "
                            "(its signature over the node id, the new key and the seq)")
    return new_key


def key_periods(node_id: str, rotations: Sequence[Rotation]) -> list[KeyPeriod]:
    """Check a key chain from the node id and return every key with the part of the log it signs,
    the current key last; KeyChainError naming the first link that does not hold."""
    try:
        public_key_from_node_id(node_id)
    except InvalidInput:
        raise KeyChainError(f"{node_id[:80]!r} is not a node id") from None
    if len(rotations) > MAX_ROTATIONS:
        raise KeyChainError(f"a key chain of more than {MAX_ROTATIONS} rotations")
    periods = [KeyPeriod(node_id, 1, None, None, None, None)]
    used = {node_id}
    last_seq = 0
    for rotation in rotations:
        current = periods[-1]
        try:
            fields = json.loads(rotation.entry)
        except (UnicodeDecodeError, ValueError):
            raise KeyChainError("a rotation entry is not JSON") from None
        if not isinstance(fields, dict) or fields.get("kind") != ROTATION_KIND or fields.get("node") != node_id \
                or not isinstance(fields.get("seq"), int) or fields["seq"] <= last_seq:
            raise KeyChainError(f"not a rotation entry of {node_id} in log order")
        if not verify(current.key, rotation.entry, rotation.sig):
            raise KeyChainError(f"rotation entry {fields['seq']} is not signed by {current.key}, the key it retires")
        new_key = check_rotation(fields, current.key)
        if new_key in used:
            raise KeyChainError(f"rotation entry {fields['seq']} goes back to {new_key}, which was retired")
        used.add(new_key)
        ts = fields.get("ts") if isinstance(fields.get("ts"), str) else None
        periods[-1] = KeyPeriod(current.key, current.from_seq, fields["seq"], current.since, ts, current.rotation)
        periods.append(KeyPeriod(new_key, fields["seq"] + 1, None, ts, None, rotation))
        last_seq = fields["seq"]
    return periods


# -- files -----------------------------------------------------------------------------------------


def pending_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + PENDING_SUFFIX)


def chain_path(key_path: Path) -> Path:
    return key_path.with_name(CHAIN_FILE)


def read_chain(path: Path) -> tuple[str, list[Rotation]]:
    """(node id, rotations) from a keys.json; ConfigError when it cannot be read."""
    try:
        value = json.loads(path.read_bytes())
        node_id = value["nodeId"]
        rotations = [rotation_from_json(r) for r in value["rotations"]]
        if not isinstance(node_id, str):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, KeyChainError) as exc:
        raise ConfigError(f"{path}: not a key chain ({type(exc).__name__}); restore it from a backup, or from "
                          "the node's log (`atrium keys list` shows it)") from None
    return node_id, rotations


def write_chain(key_path: Path, node_id: str, rotations: Sequence[Rotation]) -> None:
    data = {"nodeId": node_id, "rotations": [rotation_json(r) for r in rotations],
            "note": "the node id and the key rotations of this node: keep it with the key file"}
    atomic_write_bytes(chain_path(key_path), json.dumps(data, indent=2).encode() + b"\n", mode=0o600)


def key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_pending(key_path: Path, key: Ed25519PrivateKey) -> None:
    """Keep the new key beside the current one until its rotation commits (mode 0600)."""
    atomic_write_bytes(pending_path(key_path), key_pem(key), mode=0o600)


def finish_rotation(key_path: Path, identity: NodeIdentity, new_key: Ed25519PrivateKey,
                    rotations: Sequence[Rotation]) -> None:
    """After the rotation entry committed: write the chain, then the new key over the old one, then
    drop the pending copy, and sign with the new key from now on. Each step is atomic and the order
    makes any crash recoverable: `load_identity` finishes a chain that names the pending key."""
    write_chain(key_path, identity.node_id, rotations)
    atomic_write_bytes(key_path, key_pem(new_key), mode=0o600)
    pending = pending_path(key_path)
    if pending.exists() and _key_id_of(pending) == node_id_for(new_key.public_key()):
        pending.unlink()
    identity.adopt(new_key, rotations)


def finish_from_pending(key_path: Path, wanted: str) -> bool:
    """Move `node.key.next` over the key file when it holds the key `wanted` (the chain names it)."""
    pending = pending_path(key_path)
    if not pending.exists() or _key_id_of(pending) != wanted:
        return False
    atomic_write_bytes(key_path, pending.read_bytes(), mode=0o600)
    pending.unlink()
    log.warning("finished an interrupted key rotation: %s now holds %s", key_path, wanted)
    return True


def _key_id_of(path: Path) -> str | None:
    try:
        return node_id_for(read_private_key(path).public_key())
    except ConfigError:
        return None


async def logged_rotations(session: Any, node_id: str) -> list[Rotation]:
    """The node's rotation entries as its own log holds them, in order."""
    from node.core.tables import LogEntry

    rows = (await session.exec(select(LogEntry.data, LogEntry.sig).where(
        LogEntry.origin == node_id, LogEntry.kind == ROTATION_KIND).order_by(col(LogEntry.seq)))).all()
    return [Rotation(bytes(data), bytes(sig)) for data, sig in rows]


async def complete_rotation(key_path: Path, identity: NodeIdentity, session: Any) -> bool:
    """Bring the identity and the files in line with the node's own log, which decides which key signs:
    a rotation that committed while the key files were not yet switched (a crash, or `atrium keys
    rotate` run while this process was serving) is finished here. True when the key changed.
    ConfigError when the log names a key that no file holds."""
    from node.core.tables import LogHead

    if not identity.rotated:
        # keys.json lost after a rotation: this key is the current key of one log here, the node's own.
        owner = (await session.exec(select(LogHead).where(LogHead.key_id == identity.key_id))).first()
        if owner is not None:
            rotations = await logged_rotations(session, owner.origin)
            if key_periods(owner.origin, rotations)[-1].key == identity.key_id:
                write_chain(key_path, owner.origin, rotations)
                identity.adopt(identity.private_key, rotations, owner.origin)
                log.warning("%s was missing: rewrote it from the log (node %s)", chain_path(key_path), owner.origin)
    head = await session.get(LogHead, identity.node_id)
    wanted = head.key_id if head is not None and head.key_id else identity.node_id
    if wanted == identity.key_id:
        return False
    rotations = await logged_rotations(session, identity.node_id)
    periods = key_periods(identity.node_id, rotations)
    if periods[-1].key != wanted:
        raise ConfigError(f"the log's head says {identity.node_id} signs with {wanted}, its rotation entries "
                          f"lead to {periods[-1].key}")
    for candidate in (pending_path(key_path), key_path):
        if candidate.exists() and _key_id_of(candidate) == wanted:
            finish_rotation(key_path, identity, read_private_key(candidate), rotations)
            log.warning("now signing with %s (rotation entry %s of the log)", wanted, periods[-1].from_seq - 1)
            return True
    raise ConfigError(f"the node's log says it signs with {wanted} since entry {periods[-1].from_seq - 1}, but "
                      f"neither {key_path} nor {pending_path(key_path)} holds that key: restore it from a backup")


async def refresh_identity(db: Any, identity: NodeIdentity, key_path: Path) -> bool:
    """Adopt a rotation another process committed (`atrium keys rotate` beside a serving node, or
    another `atrium serve` sharing the database): one read of the log's head, and the switch when it
    names another key. True when the key changed."""
    from node.core.tables import LogHead

    async with db.read_session() as session:
        head = await session.get(LogHead, identity.node_id)
        if head is None or (head.key_id or identity.node_id) == identity.key_id:
            return False
        return await complete_rotation(key_path, identity, session)


__all__ = ["KeyChainError", "KeyPeriod", "PROOF_PURPOSE", "ROTATION_KIND", "check_rotation", "chain_path",
           "complete_rotation", "finish_from_pending", "finish_rotation", "key_periods", "logged_rotations",
           "pending_path", "proof_message", "read_chain", "refresh_identity", "rotation_body", "rotation_from_json", "rotation_json",
           "write_chain", "write_pending"]
