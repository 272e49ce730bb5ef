"""The reporting and moderation commands: `atrium report`, `atrium appeal`, `atrium moderation ...`.

They talk to a node over its HTTP API (node/api/moderation.py) with an API token, like `atrium publish`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from node.cli import UsageError, _clip, _node_target, _table, out, run_async


def _client(args: argparse.Namespace) -> Any:
    from node.client import NodeClient

    url, token = _node_target(args, need_token=False)
    if not token:
        raise UsageError("this command needs an API token: give --token TOKEN or set ATRIUM_TOKEN")
    return NodeClient(url, token)


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None, **params: Any) -> Any:
    async def run() -> Any:
        async with _client(args) as node:
            if method == "GET":
                return await node.get(path, **params)
            return await node.post(path, body)

    return run_async(run())


def _print_json(answer: Any) -> None:
    out(json.dumps(answer, indent=2, ensure_ascii=False))


def _print_action(action: dict[str, Any]) -> None:
    level = f" to {action['levelName']}" if action.get("levelName") else ""
    out(f"action {action['id']}: {action['action']}{level} on {action['target']}"
        + (f" (reports {', '.join(map(str, action['reportIds']))})" if action.get("reportIds") else ""))


def cmd_report(args: argparse.Namespace) -> int:
    body = {"target": args.target, "reason": args.reason, "details": args.details or ""}
    for name in ("claimant_name", "claimant_email", "evidence"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    report = _call(args, "POST", "/api/node/v1/reports", body)
    out(f"report {report['id']} on {report['target']} is {report['status']}; moderators will look at it")
    return 0


def cmd_appeal(args: argparse.Namespace) -> int:
    if args.action_id is None:
        answer = _call(args, "GET", "/api/node/v1/moderation/actions/mine")
        if args.json:
            _print_json(answer)
        elif not answer["items"]:
            out("no moderator action concerns you or your work")
        else:
            _table(("ACTION", "WHAT", "TARGET", "WHEN", "REASON"),
                   [(str(a["id"]), a["action"], a["target"], a["createdAt"][:19], _clip(a["reason"], 50))
                    for a in answer["items"]])
        return 0
    if not args.text:
        raise UsageError("--text: say why the action should be reverted")
    appeal = _call(args, "POST", "/api/node/v1/appeals", {"action_id": args.action_id, "text": args.text})
    out(f"appeal {appeal['id']} against action {appeal['actionId']} is {appeal['status']}")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    answer = _call(args, "GET", "/api/node/v1/moderation/reports", status=args.status, reason=args.reason,
                   kind=args.kind, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json(answer)
        return 0
    if not answer["items"]:
        out("the queue is empty")
        return 0
    _table(("ID", "TARGET", "REASON", "STATUS", "FILED", "DETAILS"),
           [(str(r["id"]), r["target"], r["reason"], r["status"], r["createdAt"][:19],
             _clip(" ".join(filter(None, [r["details"], r.get("claimantName"), r.get("claimantEmail"),
                                           r.get("evidence")])), 60)) for r in answer["items"]])
    if answer["metadata"]["nextCursor"]:
        out(f"more: --cursor {answer['metadata']['nextCursor']}")
    return 0


def _action_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"action": args.action, "reason": args.reason or ""}
    if args.level is not None:
        body["level"] = args.level
    return body


def cmd_action(args: argparse.Namespace) -> int:
    _print_action(_call(args, "POST", f"/api/node/v1/moderation/reports/{args.report_id}/action", _action_body(args)))
    return 0


def cmd_target(args: argparse.Namespace) -> int:
    _print_action(_call(args, "POST", "/api/node/v1/moderation/actions", {"target": args.target, **_action_body(args)}))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    answer = _call(args, "GET", "/api/node/v1/moderation/log", target=args.target, limit=args.limit,
                   cursor=args.cursor)
    if args.json:
        _print_json(answer)
        return 0
    if not answer["items"]:
        out("no actions recorded")
        return 0
    _table(("ID", "WHEN", "ACTION", "LEVEL", "TARGET", "MODERATOR", "REASON"),
           [(str(a["id"]), a["createdAt"][:19], a["action"], a["levelName"] or "-", a["target"],
             str(a["moderatorId"]), _clip(a["reason"], 50)) for a in answer["items"]])
    if answer["metadata"]["nextCursor"]:
        out(f"more: --cursor {answer['metadata']['nextCursor']}")
    return 0


def cmd_appeals(args: argparse.Namespace) -> int:
    decision, appeal_id = ("grant", args.grant) if args.grant is not None else ("deny", args.deny)
    if appeal_id is not None:
        appeal = _call(args, "POST", f"/api/node/v1/moderation/appeals/{appeal_id}",
                       {"decision": decision, "reason": args.reason or ""})
        out(f"appeal {appeal['id']} {appeal['status']}")
        return 0
    answer = _call(args, "GET", "/api/node/v1/moderation/appeals", status=args.status, limit=args.limit)
    if args.json:
        _print_json(answer)
        return 0
    if not answer["items"]:
        out("no appeals")
        return 0
    _table(("ID", "ACTION", "STATUS", "FILED", "TEXT"),
           [(str(a["id"]), str(a["actionId"]), a["status"], a["createdAt"][:19], _clip(a["text"], 60))
            for a in answer["items"]])
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser, remote: argparse.ArgumentParser) -> None:
    """Add `report`, `appeal` and `moderation` to the `atrium` parser."""

    def command(parent: Any, name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=text, description=text, parents=[common, remote])
        p.set_defaults(func=func)
        return p

    p = command(sub, "report", cmd_report, "report a model, version, image or user to this node's moderators")
    p.add_argument("target", metavar="TARGET", help="model:ID, version:ID, image:ID or user:NAME")
    p.add_argument("--reason", required=True, help="TOSViolation, NSFW, Ownership or Spam")
    p.add_argument("--details", metavar="TEXT", help="what is wrong")
    p.add_argument("--claimant-name", metavar="NAME", help="Ownership: the artist's name")
    p.add_argument("--claimant-email", metavar="EMAIL", help="Ownership: how to reach the artist")
    p.add_argument("--evidence", metavar="TEXT", help="Ownership: links or text showing the work is theirs")

    p = command(sub, "appeal", cmd_appeal, "appeal a moderator's action on you or your work (without "
                "ACTION_ID: list the actions you may appeal)")
    p.add_argument("action_id", nargs="?", type=int, metavar="ACTION_ID")
    p.add_argument("--text", metavar="TEXT", help="why the action should be reverted")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")

    moderation = sub.add_parser("moderation", help="the moderator queue, actions and appeals",
                                parents=[common]).add_subparsers(dest="moderation_command", required=True,
                                                                 metavar="ACTION")
    p = command(moderation, "queue", cmd_queue, "list reports, oldest first (open ones by default)")
    p.add_argument("--status", default="open", help="open (default), actioned, dismissed or all")
    p.add_argument("--reason", help="only this reason")
    p.add_argument("--kind", help="only reports on model, version, image or user")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--cursor", type=int, metavar="ID", help="the next page, as the previous one said")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    for name, func, text, what in (
            ("action", cmd_action, "act on a report's target (resolves every open report on it)", "report_id"),
            ("target", cmd_target, "act on a target directly", "target")):
        p = command(moderation, name, func, text)
        if what == "report_id":
            p.add_argument("report_id", type=int, metavar="REPORT_ID")
        else:
            p.add_argument("target", metavar="TARGET", help="model:ID, image:ID, user:NAME or remote:ORIGIN:ID")
        p.add_argument("action", metavar="ACTION", help="relabel, lock_level, unlock_level, unpublish, takedown, "
                       "restore, ban, unban or dismiss")
        p.add_argument("--level", metavar="LEVEL", help="relabel and lock_level: PG, PG-13, R, X or XXX")
        p.add_argument("--reason", metavar="TEXT", help="why (kept in the moderation log)")
    p = command(moderation, "log", cmd_log, "list recorded moderator actions, newest first")
    p.add_argument("--target", metavar="TARGET", help="only actions on this target")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--cursor", type=int, metavar="ID", help="the next page, as the previous one said")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    p = command(moderation, "appeals", cmd_appeals, "list appeals, or grant or deny one")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--grant", type=int, metavar="ID", help="grant this appeal: the action is reverted")
    group.add_argument("--deny", type=int, metavar="ID", help="deny this appeal")
    p.add_argument("--reason", metavar="TEXT", help="the decision's reason, shown to the appellant")
    p.add_argument("--status", default="open", help="open (default), granted, denied or all")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
