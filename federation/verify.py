"""Checking another node's log before believing any of it.

A follower keeps a cursor per origin: the last sequence number it applied and that entry's hash. New
entries must continue it exactly: the next sequence number, `prev` equal to the cursor's hash, the
origin's node id, and the origin's signature over the exact bytes. Anything else is refused with the
kind of failure and the evidence:

- `tampered`: the bytes do not match their signature (or are not an entry at all);
- `forged`: signed by, or naming, another node;
- `replayed`: a sequence number at or below the cursor (an old entry sent again);
- `reordered`: a sequence number past the next one (entries skipped or out of order);
- `fork`: the right sequence number but another history (`prev` differs): the origin signed two logs.

With a signed checkpoint covering the batch, one signature check plus the hash chain and the Merkle
root vouch for every entry, which is how a follower syncs faster than it could verify signatures.

Key rotation (node/core/keychain.py): the cursor also holds the key the origin signs with now
(starting with the key its node id stands for) and the keys it retired. A `node.key_rotated` entry is
always checked on its own, signed by the current key and with the new key's proof of possession, and
moves the cursor to the new key; an entry a retired key signs after that is `forged`. A checkpoint is
checked with the key current at its size.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from federation import merkle
from federation.log import SignedEntry, checkpoint_body, checkpoint_origin, note_key_id
from node.core.errors import InvalidInput
from node.core.identity import public_key_from_node_id, verify
from node.core.keychain import ROTATION_KIND, KeyChainError, check_rotation


class LogRejected(InvalidInput):
    """A peer's log entry or checkpoint that must not be applied."""

    def __init__(self, kind: str, detail: str, evidence: dict[str, Any] | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.evidence = evidence or {}


@dataclass
class Cursor:
    """Where a follower is in an origin's log."""

    origin: str
    seq: int = 0
    entry_hash: str = "0" * 64
    leaves: list[bytes] = field(default_factory=list)  # leaf hashes so far (for checkpoint checks)
    key: str | None = None  # the key that signs the next entry (None: the key the origin's id stands for)
    retired: dict[str, int] = field(default_factory=dict)  # retired key -> seq of the rotation that retired it

    @property
    def signer(self) -> str:
        return self.key or self.origin


def parse_entry(entry: SignedEntry) -> dict[str, Any]:
    try:
        fields = entry.fields
    except ValueError:  # orjson.JSONDecodeError is a ValueError, and so is bad UTF-8
        raise LogRejected("tampered", "an entry is not JSON", {"entry": entry.data[:200].decode("utf-8", "replace")}) from None
    if not isinstance(fields, dict) or not isinstance(fields.get("seq"), int) or not isinstance(fields.get("prev"), str) \
            or not isinstance(fields.get("node"), str) or not isinstance(fields.get("kind"), str):
        raise LogRejected("tampered", "an entry lacks node, seq, prev or kind", {"entry": entry.data.decode("utf-8", "replace")})
    return fields


def check_entry(cursor: Cursor, entry: SignedEntry, *, signature: bool = True) -> dict[str, Any]:
    """Check that `entry` continues `cursor` (and its signature, unless a checkpoint vouches for it;
    a key rotation's signature and proof are checked always); returns its fields. Does not move the
    cursor."""
    fields = parse_entry(entry)
    evidence = {"entry": entry.data.decode("utf-8", "replace"), "sig": base64.b64encode(entry.sig).decode()}
    if fields["node"] != cursor.origin:
        raise LogRejected("forged", f"entry {fields['seq']} names {fields['node']}, not {cursor.origin}", evidence)
    rotation = fields["kind"] == ROTATION_KIND
    if (signature or rotation) and not verify(cursor.signer, entry.data, entry.sig):
        retired = next((k for k in cursor.retired if verify(k, entry.data, entry.sig)), None)
        if retired is not None:
            raise LogRejected("forged", f"entry {fields['seq']} is signed by {retired}, a key {cursor.origin} "
                              f"retired at entry {cursor.retired[retired]}; it signs with {cursor.signer} now",
                              evidence)
        raise LogRejected("tampered", f"entry {fields['seq']}: the signature of {cursor.signer} does not verify "
                          "(altered bytes or a forged signature)", evidence)
    expected = cursor.seq + 1
    if fields["seq"] <= cursor.seq:
        raise LogRejected("replayed", f"entry {fields['seq']} again; already at {cursor.seq}", evidence)
    if fields["seq"] > expected:
        raise LogRejected("reordered", f"entry {fields['seq']} where {expected} was due", evidence)
    if fields["prev"] != cursor.entry_hash:
        raise LogRejected("fork", f"entry {fields['seq']} continues another history (prev {fields['prev'][:16]}..., "
                          f"expected {cursor.entry_hash[:16]}...)", evidence)
    if rotation:
        try:
            new_key = check_rotation(fields, cursor.signer)
        except KeyChainError as exc:
            raise LogRejected("forged", f"a key rotation that does not hold: {exc.detail}", evidence) from None
        if new_key in cursor.retired or new_key == cursor.origin:
            raise LogRejected("forged", f"entry {fields['seq']} rotates back to the retired key {new_key}", evidence)
    return fields


def advance(cursor: Cursor, entry: SignedEntry, seq: int, fields: dict[str, Any] | None = None) -> None:
    """Move the cursor past a checked entry (and, for a key rotation, to the new key)."""
    cursor.seq = seq
    cursor.entry_hash = hashlib.sha256(entry.data).hexdigest()
    cursor.leaves.append(merkle.leaf_hash(entry.data))
    if fields is not None and fields["kind"] == ROTATION_KIND:
        cursor.retired[cursor.signer] = seq
        cursor.key = fields["body"]["newKey"]


def parse_checkpoint(note: bytes, origin: str) -> tuple[int, bytes, bytes, str]:
    """(size, root, signed body, signature lines) of `origin`'s checkpoint, signatures not yet checked."""
    try:
        text = note.decode()
        body, _, signatures = text.partition("\n\n")
        lines = body.split("\n")
        name, size_text, root_text = lines[0], lines[1], lines[2]
        size, root = int(size_text), base64.b64decode(root_text, validate=True)
    except (UnicodeDecodeError, ValueError, IndexError):
        raise LogRejected("tampered", "not a checkpoint (origin, size and root lines, then signatures)") from None
    if name != checkpoint_origin(origin):
        raise LogRejected("forged", f"the checkpoint is of {name!r}, not {checkpoint_origin(origin)!r}")
    if checkpoint_body(origin, size, root) != (body + "\n").encode():
        raise LogRejected("tampered", "the checkpoint has extra lines")
    return size, root, (body + "\n").encode(), signatures


def checkpoint_signed_by(origin: str, key: str, body: bytes, signatures: str) -> bool:
    """True when one of the note's signature lines is `key`'s signature of the checkpoint body."""
    from cryptography.hazmat.primitives import serialization

    name = checkpoint_origin(origin)
    raw = public_key_from_node_id(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = note_key_id(name, raw)
    for line in signatures.strip("\n").split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014" or parts[1] != name:
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except ValueError:
            continue
        if blob[:4] == key_id and verify(key, body, blob[4:]):
            return True
    return False


def open_checkpoint(note: bytes, origin: str, key: str | None = None) -> tuple[int, bytes]:
    """(size, root) of a checkpoint signed by `origin` (by `key`, the origin's key at that size, after
    a rotation); LogRejected otherwise."""
    size, root, body, signatures = parse_checkpoint(note, origin)
    if not checkpoint_signed_by(origin, key or origin, body, signatures):
        raise LogRejected("tampered", f"the checkpoint carries no valid signature of {key or origin}")
    return size, root


def check_batch(cursor: Cursor, entries: Sequence[SignedEntry], checkpoint: bytes | None = None) -> list[dict[str, Any]]:
    """Check a batch that continues `cursor` and move the cursor past it; all or nothing.

    With a checkpoint whose size is the batch's last sequence number, entries are checked by the hash
    chain and the Merkle root, with one signature by the key current at that size (key rotations in the
    batch are checked one by one); otherwise each signature is checked."""
    trial = Cursor(cursor.origin, cursor.seq, cursor.entry_hash, list(cursor.leaves), cursor.key, dict(cursor.retired))
    by_checkpoint = False
    if checkpoint is not None and entries and len(cursor.leaves) == cursor.seq:
        size, root, note_body, note_signatures = parse_checkpoint(checkpoint, cursor.origin)
        by_checkpoint = size == cursor.seq + len(entries)
    out = []
    for entry in entries:
        fields = check_entry(trial, entry, signature=not by_checkpoint)
        advance(trial, entry, fields["seq"], fields)
        out.append(fields)
    if by_checkpoint:
        if not checkpoint_signed_by(cursor.origin, trial.signer, note_body, note_signatures):
            raise LogRejected("tampered", f"the checkpoint carries no valid signature of {trial.signer}, the key "
                              f"of {cursor.origin} at size {size}")
        if merkle.root(trial.leaves) != root:
            # Some entry differs from what the origin signed: find which, by its own signature.
            keys = Cursor(cursor.origin, key=cursor.key, retired=dict(cursor.retired))
            for entry, fields in zip(entries, out):
                if not verify(keys.signer, entry.data, entry.sig):
                    raise LogRejected("tampered", f"entry {fields['seq']} is not what {cursor.origin} signed",
                                      {"entry": entry.data.decode("utf-8", "replace")})
                if fields["kind"] == ROTATION_KIND:
                    keys.retired[keys.signer] = fields["seq"]
                    keys.key = fields["body"]["newKey"]
            raise LogRejected("fork", "the entries do not add up to the origin's signed checkpoint")
    cursor.seq, cursor.entry_hash, cursor.leaves = trial.seq, trial.entry_hash, trial.leaves
    cursor.key, cursor.retired = trial.key, trial.retired
    return out


__all__ = ["Cursor", "LogRejected", "advance", "check_batch", "check_entry", "checkpoint_signed_by", "open_checkpoint",
           "parse_checkpoint", "parse_entry"]
