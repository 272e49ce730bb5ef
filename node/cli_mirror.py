"""`atrium mirror`: the mirroring policy of a running node (what it mirrors, the budget), and
`--run` to evaluate it now. Talks to the node's admin API (an admin's token)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(sub: Any, common: argparse.ArgumentParser, remote: argparse.ArgumentParser) -> None:
    """Add `atrium mirror` to the command parser."""
    help_text = ("show what this node mirrors of followed nodes' files ([federation.mirror]): budget, bytes "
                 "used, each file's state; --run evaluates the policy now")
    p = sub.add_parser("mirror", help=help_text, description=help_text, parents=[common, remote])
    p.set_defaults(func=cmd_mirror)
    p.add_argument("--run", action="store_true", help="evaluate the policy now: remove what is no longer "
                   "chosen, start fetching what is missing")
    p.add_argument("--wait", action="store_true", help="with --run: return once those fetches are done")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")


def cmd_mirror(args: argparse.Namespace) -> int:
    from node.cli import UsageError, _client, _clip, _human_size, _table, out, run_async

    if args.wait and not args.run:
        raise UsageError("--wait goes with --run")
    client = _client(args)

    async def run() -> int:
        async with client as node:
            if args.run:
                summary = await node.post("/api/node/v1/admin/mirror/run", {"wait": bool(args.wait)})
            status = await node.get("/api/node/v1/admin/mirror")
        if args.json:
            out(json.dumps({"run": summary, **status} if args.run else status, indent=2))
            return 0
        if args.run:
            out(f"evaluated: {summary['candidates']} candidate files, {summary['kept']} kept, "
                f"{len(summary['fetching'])} fetching, {len(summary['evicted'])} removed"
                + ("" if summary["swarmRunning"] else " (the swarm is not running: nothing can be fetched)"))
        budget = "no limit" if status["budget"] == 0 else _human_size(status["budget"])
        out(f"strategy {status['strategy']}; {_human_size(status['used'])} used of {budget}; copies kept at least "
            f"{status['minLifetimeHours']} h")
        if not status["files"]:
            out("nothing mirrored")
            return 0
        rows = [(f["originName"] or f["origin"][:16], str(f["fileId"]), _clip(f["name"], 40), _human_size(f["size"]),
                 f["state"] + (" (seeding)" if f["seeding"] else ""), f["mirroredAt"] or "-",
                 _clip(f["lastError"] or "", 60)) for f in status["files"]]
        _table(("ORIGIN", "FILE", "NAME", "SIZE", "STATE", "MIRRORED AT", "LAST ERROR"), rows)
        return 0

    return run_async(run())
