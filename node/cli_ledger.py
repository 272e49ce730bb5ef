"""`atrium ledger ...` and `atrium bounty ...`: client commands that talk to a node over its HTTP API
(`--node URL`, `--token TOKEN`, like `atrium publish`). `atrium ledger grant` needs an admin's token,
as does `atrium bounty expire`; the bounty commands need the bounties plugin enabled on the node."""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
from collections.abc import Callable
from typing import Any

from node.cli import (UsageError, _existing_file, _node_target, _table, out, run_async)

BOUNTIES = "/api/node/v1/bounties"
LEDGER = "/api/node/v1/ledger"


def _client(args: argparse.Namespace, need_token: bool = True) -> Any:
    from node.client import NodeClient

    url, token = _node_target(args, need_token=False)
    if need_token and not token:
        raise UsageError("this command needs an API token: give --token TOKEN or set ATRIUM_TOKEN "
                         "(an admin creates one with `atrium tokens create USER`)")
    return NodeClient(url, token)


def _key_header(args: argparse.Namespace) -> dict[str, str] | None:
    key = getattr(args, "idempotency_key", None)
    return {"Idempotency-Key": key} if key else None


def _amount(text: str) -> int:
    """A positive whole amount from the command line (argparse type)."""
    if not text.isdigit() or len(text) > 15 or int(text) < 1:
        raise argparse.ArgumentTypeError(f"an amount is a positive whole number, got {text!r}")
    return int(text)


def _id(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise argparse.ArgumentTypeError(f"an id is a positive whole number, got {text!r}")
    return int(text)


def _call(args: argparse.Namespace, work: Callable[[Any], Any], *, need_token: bool = True) -> int:
    client = _client(args, need_token)

    async def run() -> int:
        async with client as node:
            return await work(node)

    return run_async(run())


def _money(amount: int, currency: dict[str, str] | None = None) -> str:
    return f"{amount:,} {currency['name']}" if currency else f"{amount:,}"


# -- ledger ----------------------------------------------------------------------------------------


def cmd_ledger_balance(args: argparse.Namespace) -> int:
    async def work(node: Any) -> int:
        path = f"{LEDGER}/balance" + (f"/{args.user}" if args.user else "")
        answer = await node.get(path)
        out(f"{answer['username']}: {_money(answer['balance'], answer['currency'])}")
        return 0

    return _call(args, work)


def cmd_ledger_history(args: argparse.Namespace) -> int:
    async def work(node: Any) -> int:
        answer = await node.get(f"{LEDGER}/history", user=args.user, limit=args.limit, before=args.before)
        if args.json:
            out(json.dumps(answer, indent=2, ensure_ascii=False))
            return 0
        rows = [(str(i["transaction_id"]), i["created_at"][:19].replace("T", " "), i["type"], f"{i['amount']:+,}",
                 f"{i['balance_after']:,}", i["reason"][:50]) for i in answer["items"]]
        if not rows:
            out("no transactions")
        else:
            _table(("TX", "WHEN (UTC)", "TYPE", "AMOUNT", "BALANCE", "REASON"), rows)
        if answer["next_cursor"] is not None:
            out(f"more: --before {answer['next_cursor']}")
        return 0

    return _call(args, work)


def _transfer(path: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        async def work(node: Any) -> int:
            answer = await node.request("POST", f"{LEDGER}/{path}", headers=_key_header(args),
                                        json_body={"to": args.user, "amount": args.amount, "reason": args.reason})
            out(f"transaction {answer['id']}: {answer['type']} of {answer['amount']:,} to {args.user}")
            return 0

        return _call(args, work)

    return command


def cmd_ledger_daily(args: argparse.Namespace) -> int:
    async def work(node: Any) -> int:
        answer = await node.post(f"{LEDGER}/daily")
        out(f"transaction {answer['id']}: daily grant of {answer['amount']:,}")
        return 0

    return _call(args, work)


# -- bounties --------------------------------------------------------------------------------------


def cmd_bounty_create(args: argparse.Namespace) -> int:
    async def work(node: Any) -> int:
        body = {"name": args.name, "amount": args.amount, "expires": args.expires, "type": args.type,
                "description": args.description, "entry_mode": args.entry_mode, "entry_limit": args.entry_limit,
                "award_mode": args.award_mode, "tags": args.tag, "nsfw_level": args.nsfw_level}
        answer = await node.request("POST", BOUNTIES, json_body=body, headers=_key_header(args))
        out(str(answer["id"]))
        return 0

    return _call(args, work)


def cmd_bounty_list(args: argparse.Namespace) -> int:
    async def work(node: Any) -> int:
        answer = await node.get(BOUNTIES, state=args.state, limit=args.limit)
        if args.json:
            out(json.dumps(answer, indent=2, ensure_ascii=False))
            return 0
        if not answer["items"]:
            out("no bounties")
            return 0
        _table(("ID", "NAME", "TYPE", "POOL", "ENTRIES", "STATE", "EXPIRES (UTC)", "CREATOR"),
               [(str(b["id"]), b["name"][:40], b["type"], f"{b['pool']:,}", str(b["entry_count"]), b["state"],
                 b["expires_at"][:16].replace("T", " "), b["creator"]) for b in answer["items"]])
        return 0

    return _call(args, work, need_token=False)  # bounties are public


def cmd_bounty_show(args: argparse.Namespace) -> int:
    async def work(node: Any) -> int:
        b = await node.get(f"{BOUNTIES}/{args.id}")
        if args.json:
            out(json.dumps(b, indent=2, ensure_ascii=False))
            return 0
        out(f"bounty {b['id']}: {b['name']} ({b['type']}) by {b['creator']}")
        out(f"state {b['state']}, pool {b['pool']:,}, expires {b['expires_at']}, entries: {b['entry_mode']}, "
            f"at most {b['entry_limit']} per user, award mode {b['award_mode']}")
        if b["tags"]:
            out("tags: " + ", ".join(b["tags"]))
        if b["description"]:
            out(b["description"])
        out("benefactors:")
        for share in b["benefactors"]:
            fate = f"{share['outcome']} (entry {share['entry_id']})" if share["outcome"] else "outstanding"
            out(f"  {share['username']}: {share['amount']:,}, {fate}")
        out("entries:" if b["entries"] else "no entries yet")
        for e in b["entries"]:
            what = ", ".join(x for x in (f"image {e['image_id']}" if e["image_id"] else "",
                                         f"version {e['version_id']}" if e["version_id"] else "") if x)
            out(f"  {e['id']}: {e['username']}, {what}, awarded {e['awarded']:,}" + (f": {e['note']}" if e["note"] else ""))
        return 0

    return _call(args, work, need_token=False)  # bounties are public


def cmd_bounty_contribute(args: argparse.Namespace) -> int:
    async def work(node: Any) -> int:
        answer = await node.request("POST", f"{BOUNTIES}/{args.id}/contributions", json_body={"amount": args.amount},
                                    headers=_key_header(args))
        out(f"transaction {answer['id']}: {answer['amount']:,} added to bounty {args.id}")
        return 0

    return _call(args, work)


def cmd_bounty_enter(args: argparse.Namespace) -> int:
    if not args.image and not args.version:
        raise UsageError("an entry needs --image FILE or --version AIR (or both)")
    image = _existing_file(args.image, "--image") if args.image else None

    async def work(node: Any) -> int:
        body: dict[str, Any] = {"note": args.note}
        if image is not None:
            data = await asyncio.to_thread(image.read_bytes)
            mime = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
            uploaded = await node.request("POST", "/api/node/v1/images", data=data, headers={"Content-Type": mime})
            body["image_id"] = uploaded["id"]
        if args.version:
            body["version_id"] = (await node.resolve_air(args.version))["id"]
        entry = await node.post(f"{BOUNTIES}/{args.id}/entries", body)
        out(str(entry["id"]))
        return 0

    return _call(args, work)


def cmd_bounty_award(args: argparse.Namespace) -> int:
    async def work(node: Any) -> int:
        answer = await node.request("POST", f"{BOUNTIES}/{args.id}/awards", json_body={"entry_id": args.entry_id},
                                    headers=_key_header(args))
        out(f"transaction {answer['id']}: {answer['amount']:,} awarded to entry {args.entry_id}")
        return 0

    return _call(args, work)


def cmd_bounty_expire(args: argparse.Namespace) -> int:
    async def work(node: Any) -> int:
        answer = await node.post(f"{BOUNTIES}/expire")
        if not answer["closed"]:
            out("no bounty is due")
        for closed in answer["closed"]:
            out(f"bounty {closed['id']}: {closed['outcome']}")
        return 0

    return _call(args, work)


def add_commands(sub: Any, common: argparse.ArgumentParser, remote: argparse.ArgumentParser) -> None:
    """Add `atrium ledger` and `atrium bounty` to the parser (called from node.cli.build_parser)."""
    keyed = argparse.ArgumentParser(add_help=False)
    keyed.add_argument("--idempotency-key", metavar="KEY",
                       help="send this Idempotency-Key: running the command again with it has no second effect")

    def command(parent: Any, name: str, func: Callable[[argparse.Namespace], int], help_text: str,
                *, key: bool = False) -> argparse.ArgumentParser:
        parents = [common, remote, keyed] if key else [common, remote]
        p = parent.add_parser(name, help=help_text, description=help_text, parents=parents)
        p.set_defaults(func=func)
        return p

    ledger = sub.add_parser("ledger", help="the node's currency: balances, history, tips, grants",
                            parents=[common]).add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    p = command(ledger, "balance", cmd_ledger_balance, "show your balance (admins: anyone's)")
    p.add_argument("user", nargs="?", metavar="USER")
    p = command(ledger, "history", cmd_ledger_history, "list your transactions, newest first")
    p.add_argument("--user", metavar="USER", help="another user's history (admins only)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default: 50)")
    p.add_argument("--before", type=_id, metavar="CURSOR", help="the page after this cursor")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    for name, path, text in (("grant", "grants", "give a user new currency (admins only)"),
                             ("tip", "tips", "send some of your currency to another user")):
        p = command(ledger, name, _transfer(path), text, key=True)
        p.add_argument("user", metavar="USER")
        p.add_argument("amount", type=_amount, metavar="AMOUNT")
        p.add_argument("--reason", default="", metavar="TEXT", help="why (shown in both histories)")
    command(ledger, "daily", cmd_ledger_daily, "claim today's grant (once per UTC day, when the node gives one)")

    bounty = sub.add_parser("bounty", help="bounties: pay for the models and data sets you want",
                            parents=[common]).add_subparsers(dest="bounty_command", required=True, metavar="ACTION")
    p = command(bounty, "create", cmd_bounty_create, "open a bounty, paying its amount into escrow; prints its id",
                key=True)
    p.add_argument("--name", required=True)
    p.add_argument("--amount", required=True, type=_amount, metavar="N")
    p.add_argument("--expires", required=True, metavar="YYYY-MM-DD", help="the last day of the bounty (UTC)")
    p.add_argument("--type", default="Other", help="ModelCreation, LoraCreation, EmbedCreation, DataSetCreation, "
                                                     "DataSetCaption, ImageCreation or Other (default)")
    p.add_argument("--description", default="", metavar="TEXT")
    p.add_argument("--entry-mode", default="open", choices=["open", "benefactors"],
                   help="who may enter: anyone (open, default) or only benefactors")
    p.add_argument("--entry-limit", type=int, default=1, metavar="N", help="entries per user (default: 1)")
    p.add_argument("--award-mode", default="single", choices=["single", "split"],
                   help="where the unawarded pool goes after the grace period: the top entry (single, default) "
                        "or all entries by reactions (split)")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="a tag (repeatable)")
    p.add_argument("--nsfw-level", type=int, default=1, metavar="N", help="1 PG (default), 2, 4, 8 or 16")
    p = command(bounty, "list", cmd_bounty_list, "list bounties, newest first")
    p.add_argument("--state", choices=["open", "awarded", "refunded"])
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    p = command(bounty, "show", cmd_bounty_show, "describe a bounty: pool, benefactors, entries")
    p.add_argument("id", type=_id, metavar="ID")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    p = command(bounty, "contribute", cmd_bounty_contribute, "add to a bounty's pool", key=True)
    p.add_argument("id", type=_id, metavar="ID")
    p.add_argument("amount", type=_amount, metavar="N")
    p = command(bounty, "enter", cmd_bounty_enter, "submit an image (uploaded now) and/or a model version of yours; "
                                                   "prints the entry id")
    p.add_argument("id", type=_id, metavar="ID")
    p.add_argument("--image", metavar="FILE", help="a PNG, JPEG or WebP file")
    p.add_argument("--version", metavar="AIR", help="a model version of yours on this node, by AIR")
    p.add_argument("--note", default="", metavar="TEXT")
    p = command(bounty, "award", cmd_bounty_award, "give your whole share of a bounty to one entry (once)", key=True)
    p.add_argument("id", type=_id, metavar="ID")
    p.add_argument("entry_id", type=_id, metavar="ENTRY_ID")
    command(bounty, "expire", cmd_bounty_expire, "close the bounties that are due now (admins only; the node also "
                                                 "does it periodically)")
