"""`atrium keys`: rotate the node's signing key, and show the key chain.

`atrium keys rotate` works on the data directory whether or not the node is serving: the rotation is
an entry of the node's own log, and a serving process adopts the new key before it signs anything
else (federation/log.py). See node/core/keychain.py for the order of the steps and crash safety.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from node.core.db import Database
from node.core.identity import load_identity
from node.core.keychain import (complete_rotation, key_periods, logged_rotations, pending_path, rotation_json,
                                write_pending)


@asynccontextmanager
async def _keyed_database(config: Any, identity: Any) -> AsyncIterator[Database]:
    """The node's database, schema checked, with a rotation an earlier command left cut short completed."""
    db = Database.from_config(config)
    try:
        await db.require_current_schema()
        async with db.read_session() as session:
            await complete_rotation(config.key_path, identity, session)
        yield db
    finally:
        await db.close()


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Introduce a new signing key with a log entry signed by the current one, then switch to it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from federation.log import FederationLog
    from node.cli import _config, out, run_async
    from node.core.keychain import finish_rotation

    config = _config(args)
    identity = load_identity(config.key_path)

    async def run() -> int:
        async with _keyed_database(config, identity) as db:
            old = identity.key_id
            new_key = Ed25519PrivateKey.generate()
            write_pending(config.key_path, new_key)  # before the commit: a crash after it finds the key here
            log = FederationLog(db, identity, config.node.name, config.public_url, key_path=config.key_path)
            async with db.session() as session:
                entry, rotations = await log.rotate(session, new_key)
                await session.commit()
            finish_rotation(config.key_path, identity, new_key, rotations)
        out(f"node {identity.node_id} (its id does not change)")
        out(f"  retired:  {old} (signs entries up to {entry.seq}, the rotation itself)")
        out(f"  current:  {identity.key_id} (signs from entry {entry.seq + 1} on)")
        out(f"  key file: {config.key_path} (mode 0600; back it up together with {config.key_path.with_name('keys.json')})")
        out("Followers accept the new key from the rotation entry on; a running node switches before it signs "
            "anything else, and re-signs its manifests with the new key.")
        return 0

    return run_async(run())


def cmd_keys_list(args: argparse.Namespace) -> int:
    """The node id and every key it has signed with, from the node's own log."""
    from node.cli import _config, _table, out, run_async

    config = _config(args)
    identity = load_identity(config.key_path)

    async def run() -> int:
        async with _keyed_database(config, identity) as db, db.read_session() as session:
            rotations = await logged_rotations(session, identity.node_id)
        periods = key_periods(identity.node_id, rotations or list(identity.rotations))
        pending = pending_path(config.key_path)
        if args.json:
            out(json.dumps({"nodeId": identity.node_id, "current": identity.key_id,
                            "keys": [p.as_json() for p in periods],
                            "rotations": [rotation_json(r) for r in rotations]}, indent=2))
            return 0
        out(f"node id: {identity.node_id}")
        rows: list[Any] = [(p.key, str(p.from_seq), "-" if p.until_seq is None else str(p.until_seq),
                            p.since or "-", p.until or "-", "current" if p.until_seq is None else "retired")
                           for p in periods]
        _table(("KEY", "FROM ENTRY", "UNTIL ENTRY", "SINCE", "UNTIL", "STATE"), rows)
        if pending.exists():
            out(f"{pending} holds a key no committed rotation names (an interrupted `atrium keys rotate`); "
                "it never signs anything and the next rotation replaces it")
        return 0

    return run_async(run())


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`atrium keys rotate` and `atrium keys list` (called by node.cli.build_parser)."""
    keys = sub.add_parser("keys", help="the node's signing keys: rotate, list", parents=[common]).add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    p = keys.add_parser("rotate", parents=[common], help="switch to a new signing key (the node id stays)",
                        description="Generate a new key, introduce it with a log entry signed by the current key "
                                    "(with the new key's proof of possession) and sign with it from then on. "
                                    "Works whether or not the node is running.")
    p.set_defaults(func=cmd_keys_rotate)
    p = keys.add_parser("list", parents=[common], help="show the node id and every key with the entries it signs",
                        description="Show the node id and every key with the entries it signs.")
    p.add_argument("--json", action="store_true", help="print the chain as JSON, with the signed rotation entries")
    p.set_defaults(func=cmd_keys_list)


__all__ = ["add_commands", "cmd_keys_list", "cmd_keys_rotate"]
