"""The `atrium` command.

Every command takes `--data DIR` (default `$ATRIUM_DATA`, else `./atrium-data`). Exit codes: 0 success,
1 the command failed (the message says why), 2 a usage or configuration error. Commands that print a
secret print it alone on the last line, so `atrium users add alice | tail -n1` captures it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from node import __version__
from node.core.accounts import Accounts, parse_role
from node.core.config import (CONFIG_FILE, Config, config_from_mapping, load_config, render_template,
                              resolve_data_dir)
from node.core.db import Database
from node.core.errors import AtriumError, ConfigError, InvalidInput, PluginLoadError
from node.core.files import atomic_write_text
from node.core.identity import create_identity, load_identity
from node.core.plugins import PluginHost
from node.core.runtime import plugin_host_for
from node.core.tables import utcnow

EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandError(AtriumError):
    """A CLI command cannot go on (exit 1)."""


class UsageError(AtriumError):
    """The command was given something it cannot use: a missing file, token or node (exit 2)."""


def out(text: str = "") -> None:
    print(text, flush=True)


# -- init --------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    data_dir = Path(args.dir) if args.dir else resolve_data_dir(args.data)
    config_path = data_dir / CONFIG_FILE
    if config_path.exists():
        config = load_config(data_dir)
        identity = load_identity(config.key_path)
        out(f"{data_dir} already holds a node; nothing changed.")
        out(f"node id: {identity.node_id}")
        return 0
    # The directory holds the key and the password hashes: private to the node's user.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    settings: dict[str, dict[str, Any]] = {"node": {"name": args.name}, "plugins": {"enabled": []}}
    # Validate what we are about to write with the same rules `load_config` applies.
    config = config_from_mapping(data_dir, settings, env={})
    key_path = config.key_path
    if key_path.exists():
        identity = load_identity(key_path)
    else:
        identity = create_identity(key_path)
    atomic_write_text(config_path, render_template(settings), mode=0o644, exclusive=True)
    config = load_config(data_dir)
    status = run_async(_upgrade(config))
    if not config.database.url:
        (data_dir / "atrium.db").chmod(0o600)
    demo = [] if args.no_demo else run_async(_add_demo(config))
    out(f"created a node in {data_dir.resolve()}")
    out(f"  config:   {config_path}")
    out(f"  key:      {key_path} (mode 0600; back it up)")
    out(f"  database: {_describe_db(config)} (schema {status.current})")
    if demo:
        out(f"  demo:     {len(demo)} demo models by atrium-demo (random weights, clearly labelled; "
            "delete them any time, or use --no-demo next time)")
    out("Next: `atrium users add NAME --role admin`, then `atrium serve`.")
    out(f"node id: {identity.node_id}")
    return 0


async def _add_demo(config: Config) -> list[int]:
    from node.core.blobs import BlobStore
    from node.core.catalog import Catalog
    from node.core.demo import add_demo_content
    from node.core.ingest import Ingest

    db = Database.from_config(config)
    try:
        blobs = BlobStore(config.blobs_path)
        blobs.prepare()
        catalog = Catalog(db, config.node.name)
        from federation.log import FederationLog

        catalog.journals.append(FederationLog(db, load_identity(config.key_path), config.node.name,
                                              config.public_url).journal)
        return await add_demo_content(Accounts(db, config.accounts), catalog,
                                      Ingest(db, blobs, catalog, config.storage))
    finally:
        await db.close()


async def _upgrade(config: Config) -> Any:
    db = Database.from_config(config)
    try:
        return await db.upgrade()
    finally:
        await db.close()


def _describe_db(config: Config) -> str:
    if not config.database.url:
        return str(config.data_dir / "atrium.db")
    url = config.database.url
    # Never print a password from the URL.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        url = f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


# -- serve -------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.host:
        config.http.host = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port: must be between 0 and 65535; got {args.port}")
        config.http.port = args.port
    if args.log_json:
        config.logging.json = True
    from node.logs import configure_logging  # the web stack is imported only by the command that serves

    configure_logging(config.logging.level, json_lines=config.logging.json)
    return run_async(_serve(config, migrate=args.migrate))


async def _serve(config: Config, *, migrate: bool) -> int:
    from aiohttp import web

    from node.api.keys import NODE
    from node.app import create_app
    from node.logs import ACCESS_LOGGER, AccessLogger

    app = create_app(config, migrate=migrate)
    access_log = logging.getLogger(ACCESS_LOGGER) if config.http.access_log else None
    runner = web.AppRunner(app, access_log=access_log, access_log_class=AccessLogger, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.http.host, config.http.port)
        try:
            await site.start()
        except OSError as exc:
            raise CommandError(f"cannot listen on {config.http.host}:{config.http.port}: {exc.strerror}") from None
        port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else config.http.port  # type: ignore[union-attr]
        if config.http.port == 0 or not config.node.public_url:
            config.http.port = port
        node = app[NODE]
        host = config.http.host if ":" not in config.http.host else f"[{config.http.host}]"
        out(f"Atrium node {node.name!r} is running")
        out(f"  url:      http://{host}:{port}")
        out(f"  data:     {config.data_dir.resolve()}")
        out(f"  node id:  {node.node_id}")
        out(f"  plugins:  {', '.join(node.plugins.loaded) or 'none'}")
        out("Press Ctrl+C to stop.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        out("stopping...")
    finally:
        await runner.cleanup()
    return 0


# -- db ----------------------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        db = Database.from_config(config)
        try:
            before = await db.schema_status()
            if before.up_to_date:
                out(f"the database schema is up to date ({before.head})")
                return 0
            after = await db.upgrade()
            out(f"upgraded the database schema from {before.current or 'nothing'} to {after.current}")
            return 0
        finally:
            await db.close()

    return run_async(run())


def cmd_db_status(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        db = Database.from_config(config)
        try:
            status = await db.schema_status()
        finally:
            await db.close()
        out(f"database: {_describe_db(config)}")
        out(f"schema:   {status.current or 'none'} (this version needs {status.head})")
        out("up to date" if status.up_to_date else "out of date: run `atrium db upgrade`")
        return 0 if status.up_to_date else EXIT_FAILED

    return run_async(run())


# -- users and tokens --------------------------------------------------------------------------


@asynccontextmanager
async def _accounts(config: Config) -> AsyncIterator[Accounts]:
    db = Database.from_config(config)
    try:
        await db.require_current_schema()
        yield Accounts(db, config.accounts)
    finally:
        await db.close()


def _read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str | None:
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        if not line:
            raise InvalidInput("--password-stdin: nothing on standard input")
        return line.rstrip("\r\n")
    if getattr(args, "password", False):
        if not sys.stdin.isatty():
            raise InvalidInput("--password needs a terminal; use --password-stdin in scripts")
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise InvalidInput("the two passwords differ")
        return first
    return None


def cmd_users_add(args: argparse.Namespace) -> int:
    config = _config(args)
    role = parse_role(args.role)
    password = _read_password(args)

    async def run() -> int:
        async with _accounts(config) as accounts:
            user = await accounts.create_user(args.name, role=role, password=password, email=args.email)
            out(f"created user {user.username} ({user.role})")
            if args.no_token:
                return 0
            issued = await accounts.issue_token(user, args.token_name, expires_in_days=args.expires_days)
            out(f"API token {issued.record.prefix}... (id {issued.record.id}; shown once, keep it secret):")
            out(issued.secret)
        return 0

    return run_async(run())


def cmd_users_list(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        async with _accounts(config) as accounts:
            users = await accounts.list_users()
        rows = [(str(u.id), u.username, u.role, "disabled" if u.disabled else "active",
                 "yes" if u.password_hash else "no", u.created_at.strftime("%Y-%m-%d")) for u in users]
        _table(("ID", "USERNAME", "ROLE", "STATE", "PASSWORD", "CREATED"), rows)
        return 0

    return run_async(run())


def cmd_users_update(args: argparse.Namespace) -> int:
    config = _config(args)
    changes: dict[str, Any] = {}
    if args.users_command == "set-role":
        changes["role"] = parse_role(args.role)
    elif args.users_command in ("disable", "enable"):
        changes["disabled"] = args.users_command == "disable"
    elif args.users_command == "passwd":
        password = _read_password(args, f"New password for {args.name}: ")
        if password is None:
            raise InvalidInput("give the new password with --password (asks) or --password-stdin")
        changes["password"] = password

    async def run() -> int:
        async with _accounts(config) as accounts:
            user = await accounts.update_user(args.name, **changes)
        out(f"{user.username}: role {user.role}, {'disabled' if user.disabled else 'active'}")
        return 0

    return run_async(run())


def cmd_tokens_create(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        async with _accounts(config) as accounts:
            user = await accounts.get_user(args.user)
            issued = await accounts.issue_token(user, args.name, expires_in_days=args.expires_days)
        expiry = issued.record.expires_at.strftime("%Y-%m-%d %H:%M UTC") if issued.record.expires_at else "never"
        out(f"API token {issued.record.prefix}... (id {issued.record.id}) for {user.username}, expires {expiry}; "
            "shown once, keep it secret:")
        out(issued.secret)
        return 0

    return run_async(run())


def cmd_tokens_list(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        async with _accounts(config) as accounts:
            users = [await accounts.get_user(args.user)] if args.user else await accounts.list_users()
            rows = []
            for user in users:
                for t in await accounts.list_tokens(user):
                    state = ("revoked" if t.revoked_at else
                             "expired" if t.expires_at and t.expires_at <= utcnow() else "active")
                    rows.append((str(t.id), user.username, t.name, t.prefix + "...", state,
                                 t.expires_at.strftime("%Y-%m-%d") if t.expires_at else "never",
                                 t.last_used_at.strftime("%Y-%m-%d %H:%M") if t.last_used_at else "never"))
        _table(("ID", "USER", "NAME", "PREFIX", "STATE", "EXPIRES", "LAST USED"), rows)
        return 0

    return run_async(run())


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        async with _accounts(config) as accounts:
            # Whoever holds the data directory runs the node: no actor, any token.
            token = await accounts.revoke_token(args.id)
        out(f"revoked token {token.id} ({token.name})")
        return 0

    return run_async(run())


# -- plugins and config ------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    config = _config(args)
    host: PluginHost = plugin_host_for(config)
    rows = []
    for info in host.info():
        rows.append((info.name, info.state, info.distribution, info.error or info.summary or info.target))
    if not rows:
        out("no plugins are installed")
        return 0
    _table(("NAME", "STATE", "PACKAGE", "DETAIL"), rows)
    return EXIT_FAILED if any(r[1] == "failed" for r in rows) else 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Everything that can be checked without starting the node: keys, key file, database URL and
    reachability, plugins and their routes."""
    from node.app import create_app

    config = _config(args)
    load_identity(config.key_path)
    _ = config.database_url
    host = plugin_host_for(config)
    host.load(strict=True)
    create_app(config, plugins=host)

    async def reach() -> Any:
        db = Database.from_config(config)
        try:
            return await db.schema_status()
        finally:
            await db.close()

    status = run_async(reach())
    out(f"{config.config_path}: OK")
    if not status.up_to_date:
        out(f"note: the database schema is at {status.current or 'nothing'}; run `atrium db upgrade`")
    return 0


# -- client commands: publish, models, show (they talk to a node over its HTTP API) ------------


def _node_target(args: argparse.Namespace, *, need_token: bool) -> tuple[str, str | None]:
    """The node's URL and the API token: `--node`, else $ATRIUM_NODE, else the public URL of the node
    in `--data`; `--token`, else $ATRIUM_TOKEN."""
    url = args.node or os.environ.get("ATRIUM_NODE")
    if not url:
        try:
            url = _config(args).public_url
        except ConfigError as exc:
            raise UsageError("no node to talk to: give --node URL or set ATRIUM_NODE "
                             f"(there is no usable node in --data: {exc.detail})") from None
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--node: the node's URL starts with http:// or https://; got {url!r}")
    token = args.token or os.environ.get("ATRIUM_TOKEN") or None
    if need_token and not token:
        raise UsageError("publishing needs an API token of a creator: give --token TOKEN or set ATRIUM_TOKEN "
                         "(an admin creates one with `atrium users add NAME --role creator`)")
    return url.rstrip("/"), token


def _client(args: argparse.Namespace, *, need_token: bool = False) -> Any:
    from node.client import NodeClient

    url, token = _node_target(args, need_token=need_token)
    return NodeClient(url, token)


def _mib(size: float) -> str:
    return f"{size / 1024**2:.1f} MiB"


def _human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class ProgressBar:
    """An upload's progress on standard error: a bar redrawn in place on a terminal, an occasional
    plain line otherwise (logs of scripts stay short). `finish` is called once the node has the file."""

    WIDTH = 30
    REDRAW_SECONDS = 0.1
    LINE_SECONDS = 10.0

    def __init__(self, name: str, stream: Any = None) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = self.shown = time.monotonic()
        self.first: int | None = None
        self.drawn = False
        self.total = 0
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        self.total = total
        if self.first is None:
            self.first, self.started = done, now  # a resumed upload's speed counts only the new bytes
        every = self.REDRAW_SECONDS if self.tty else self.LINE_SECONDS
        if done == self.last or (now - self.shown < every and not (self.tty and done >= total)):
            return
        self.shown, self.last = now, done
        percent = 100 * done / total if total else 100
        numbers = f"{percent:5.1f}%  {_mib(done)} / {_mib(total)}  {_mib(self.rate(done))}/s"
        if self.tty:
            filled = int(self.WIDTH * done / total) if total else self.WIDTH
            self.stream.write(f"\r{self.name}  [{'#' * filled}{'.' * (self.WIDTH - filled)}]  {numbers}\x1b[K")
        else:
            self.stream.write(f"uploading {self.name}: {numbers}\n")
        self.stream.flush()
        self.drawn = True

    def rate(self, done: int) -> float:
        elapsed = time.monotonic() - self.started
        return (done - (self.first or 0)) / elapsed if elapsed > 0 else 0.0

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n" if self.drawn else "")
        else:
            elapsed = time.monotonic() - self.started
            self.stream.write(f"uploaded {self.name}: {_mib(self.total)} in {elapsed:.1f} s "
                              f"({_mib(self.rate(self.total))}/s)\n")
        self.stream.flush()
        self.drawn = False

    def interrupt(self) -> None:
        """End a bar that stopped part-way, so the error after it starts on its own line."""
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
        self.drawn = False


def _existing_file(text: str, option: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"{option}: no such file: {text}")
    return path


def cmd_publish(args: argparse.Namespace) -> int:
    path = _existing_file(args.path, "PATH")
    images = [_existing_file(image, "--image") for image in args.image]
    if args.model_id is None and (not args.name or not args.type):
        raise UsageError("a new model needs --name and --type (or give --model-id to add a version to a model)")
    client = _client(args, need_token=True)
    return run_async(_publish(client, args, path, images))


async def _publish(client: Any, args: argparse.Namespace, path: Path, images: list[Path]) -> int:
    from node.client import UploadOutcomeUnknown

    async with client as node:
        created_model: int | None = None
        if args.model_id is None:
            model = await node.post("/api/node/v1/models", {
                "name": args.name, "type": args.type, "description": args.description or "",
                "tags": args.tag, "nsfw_level": args.nsfw_level})
            model_id = created_model = model["id"]
            out(f"created model {model_id}: {model['name']} ({model['type']})")
        else:
            model_id = args.model_id
        version_body: dict[str, Any] = {"name": args.version_name, "base_model": args.base_model,
                                        "trained_words": args.trigger}
        if args.model_id is not None and args.description:
            version_body["description"] = args.description
        version_id: int | None = None
        bar = ProgressBar(path.name)
        try:
            version = await node.post(f"/api/node/v1/models/{model_id}/versions", version_body)
            version_id = version["id"]
            out(f"created version {version_id}: {version['name']} ({version['baseModel']})")
            try:
                stored = await node.upload_file(version_id, path, bar)
                bar.finish()
            except UploadOutcomeUnknown:
                bar.interrupt()
                stored = await _stored_file(node, model_id, version_id, path)
            out(f"stored {stored['name']}: {_mib(stored['sizeKB'] * 1024)}, "
                f"SHA256 {stored['hashes'].get('SHA256', '?')}")
            for image_path in images:
                image = await node.add_image(version_id, image_path, nsfw_level=args.nsfw_level)
                described = " with generation metadata" if image.get("meta") else ""
                out(f"added image {image['id']}: {image_path.name} ({image['width']}x{image['height']}){described}")
        except AtriumError as exc:
            bar.interrupt()
            note = await _discard_draft(node, created_model, model_id, version_id)
            raise CommandError(f"{exc.detail}\natrium: {note}" if note else exc.detail) from None
        except BaseException:  # interrupted: tidy up all the same
            bar.interrupt()
            note = await _discard_draft(node, created_model, model_id, version_id)
            if note:
                print(f"atrium: {note}", file=sys.stderr)
            raise
        if args.draft:
            out(f"left model {model_id} as a draft (publish it with POST /api/node/v1/models/{model_id}/publish)")
            air = version["air"]
        else:
            published = await node.post(f"/api/node/v1/models/{model_id}/publish")
            air = next((v["air"] for v in published["modelVersions"] if v["id"] == version_id), version["air"])
            out(f"published model {model_id}")
        out(air)
    return 0


async def _stored_file(node: Any, model_id: int, version_id: int, path: Path) -> Any:
    """The file an upload whose last answer was lost most likely stored: the version's file of that name."""
    model = await node.get(f"/api/node/v1/models/{model_id}")
    version = next((v for v in model["modelVersions"] if v["id"] == version_id), {"files": []})
    size = path.stat().st_size
    for stored in version["files"]:
        if stored["name"] == path.name and round(stored["sizeKB"] * 1024) == size:
            return stored
    raise CommandError(f"the upload of {path.name} was cut off at its end and the node does not have the file")


async def _discard_draft(node: Any, created_model: int | None, model_id: int, version_id: int | None) -> str:
    """Remove what this command created before a failure, so the creator is not left with a stray
    draft; returns a line saying what happened (empty when there was nothing to remove)."""
    from node.client import NodeError, NodeUnreachable

    if created_model is not None:
        what, path = f"model {created_model}", f"/api/node/v1/models/{created_model}"
    elif version_id is not None:
        what, path = f"version {version_id} of model {model_id}", f"/api/node/v1/versions/{version_id}"
    else:
        return ""
    try:
        await asyncio.wait_for(node.delete(path), timeout=15)
    except (NodeError, NodeUnreachable, asyncio.TimeoutError) as exc:
        return (f"could not delete the draft {what} that this command created: "
                f"{getattr(exc, 'detail', 'the node did not answer')}")
    return f"deleted the draft {what} that this command created; nothing was published"


def cmd_models(args: argparse.Namespace) -> int:
    client = _client(args)

    async def run() -> int:
        async with client as node:
            answer = await node.get("/api/v1/models", query=args.query, types=args.type, tag=args.tag,
                                    baseModels=args.base_model, sort=args.sort, limit=args.limit)
        if args.json:
            out(json.dumps(answer, indent=2, ensure_ascii=False))
            return 0
        if not answer["items"]:
            out("no models match")
            return 0
        rows = []
        for model in answer["items"]:
            newest = model["modelVersions"][0] if model["modelVersions"] else {}
            rows.append((str(model["id"]), _clip(model["name"], 40), model["type"], newest.get("baseModel") or "-",
                         model["creator"]["username"], str(model["stats"]["downloadCount"]),
                         newest.get("air") or "-"))
        _table(("ID", "NAME", "TYPE", "BASE", "CREATOR", "DOWNLOADS", "AIR"), rows)
        return 0

    return run_async(run())


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def cmd_show(args: argparse.Namespace) -> int:
    client = _client(args)
    target = args.target.strip()

    async def run() -> int:
        from node.client import NodeError

        async with client as node:
            if target.isdigit():
                model = await _model_as_seen(node, int(target))
                if not model["modelVersions"]:
                    raise CommandError(f"model {target} has no version yet")
                version = model["modelVersions"][0]
            else:
                version = await node.resolve_air(target)
                model = None  # a followed node's version, or a draft seen through someone else's eyes
                if "origin" not in version:
                    try:
                        model = await _model_as_seen(node, version["modelId"])
                    except NodeError:
                        pass
        if args.json:
            out(json.dumps({"model": model, "version": version}, indent=2, ensure_ascii=False))
            return 0
        _print_summary(model, version)
        return 0

    return run_async(run())


async def _model_as_seen(node: Any, model_id: int) -> Any:
    """The published model, else (with a token) the caller's own draft."""
    from node.client import NodeError

    try:
        return await node.get(f"/api/v1/models/{model_id}")
    except NodeError as exc:
        if exc.status != 404 or not node.token:
            raise
    return await node.get(f"/api/node/v1/models/{model_id}")


def _print_summary(model: Any, version: Any) -> None:
    name = model["name"] if model else version["model"]["name"]
    kind = model["type"] if model else version["model"]["type"]
    out(f"{name} ({kind})")
    rows = [("model", str(version["modelId"]) + (f", {model['status']}" if model and model.get("status") else "")),
            ("creator", model["creator"]["username"] if model else "-"),
            ("version", f"{version['name']} ({version['id']}), {version['status']}"),
            *([("origin", f"{version['origin']['name']} ({version['origin']['url'] or version['origin']['id']})")]
              if version.get("origin") else []),
            ("base model", version.get("baseModel") or "-"),
            ("trigger words", ", ".join(version.get("trainedWords") or []) or "-")]
    if model:
        rows += [("tags", ", ".join(model.get("tags") or []) or "-"),
                 ("downloads", str(model["stats"]["downloadCount"]))]
    if version.get("images"):
        rows.append(("images", str(len(version["images"]))))
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        out(f"  {(label + ':').ljust(width)} {value}")
    files = version.get("files") or []
    out("  files:" if files else "  files:  none")
    for stored in files:
        meta = stored.get("metadata") or {}
        details = ", ".join(str(v) for v in (meta.get("format"), meta.get("fp")) if v)
        primary = "  (primary)" if stored.get("primary") else ""
        out(f"    {stored['name']}  {_mib(stored['sizeKB'] * 1024)}  {details}{primary}")
        out(f"      SHA256:   {stored['hashes'].get('SHA256', '-')}")
        out(f"      download: {stored['downloadUrl']}")
    out(f"  AIR: {version['air']}")


# -- plumbing ----------------------------------------------------------------------------------


# -- federation --------------------------------------------------------------------------------


@asynccontextmanager
async def _peers(config: Config) -> AsyncIterator[Any]:
    from federation.peers import Peers

    db = Database.from_config(config)
    try:
        await db.require_current_schema()
        yield Peers(db, config.federation)
    finally:
        await db.close()


def cmd_follow(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        async with _peers(config) as peers:
            peer = await peers.follow(args.url)
        out(f"following {peer.url} (peer {peer.id}); a running node starts syncing it within seconds")
        return 0

    return run_async(run())


def cmd_unfollow(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        async with _peers(config) as peers:
            peer = await peers.unfollow(args.peer)
        out(f"no longer following {peer.url}; what was mirrored from it stays, signed by its origin")
        return 0

    return run_async(run())


def cmd_peers(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        async with _peers(config) as peers:
            if args.resume:
                peer = await peers.resume(args.resume)
                out(f"{peer.url} may sync again")
                return 0
            statuses = await peers.statuses()
        if args.json:
            out(json.dumps([s.as_json() for s in statuses], indent=2))
            return 0
        rows = [(str(s.id), s.url, s.name or "?", s.state, str(s.synced_seq),
                 "?" if s.lag is None else str(s.lag), _clip(s.last_error or "", 60)) for s in statuses]
        _table(("ID", "URL", "NAME", "STATE", "SYNCED", "LAG", "LAST ERROR"), rows)
        halted = [s for s in statuses if s.state == "halted"]
        for s in halted:
            out(f"peer {s.id} halted: {s.last_error}; evidence: {json.dumps(s.evidence)[:2000]}")
        return 0

    return run_async(run())


def cmd_followers(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> int:
        from federation.followers import Followers

        db = Database.from_config(config)
        try:
            await db.require_current_schema()
            from federation.log import FederationLog

            identity = load_identity(config.key_path)
            followers = Followers(db, identity, config.federation, FederationLog(
                db, identity, config.node.name, config.public_url, key_path=config.key_path))
            for state, target in (("approved", args.approve), ("blocked", args.block), ("pending", args.hold)):
                if target is not None:
                    row = await followers.set_state(target, state)
                    out(f"follower {row.id} ({row.node_id} at {row.url}) is now {row.state}")
                    return 0
            rows = await followers.list()
        finally:
            await db.close()
        if args.json:
            out(json.dumps([{"id": f.id, "nodeId": f.node_id, "url": f.url, "state": f.state,
                             "lastError": f.last_error} for f in rows], indent=2))
            return 0
        _table(("ID", "NODE", "URL", "STATE", "LAST PUSH ERROR"),
               [(str(f.id), f.node_id, f.url, f.state, _clip(f.last_error or "", 50)) for f in rows])
        return 0

    return run_async(run())

# -- pull --------------------------------------------------------------------------------------

RATE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _rate(text: str) -> int:
    """`--max-rate`: bytes per second, with an optional K, M or G (binary) suffix."""
    number, unit = text.strip().rstrip("/s").rstrip("iBb"), ""
    if number and number[-1].lower() in "kmg":
        number, unit = number[:-1], number[-1].lower()
    try:
        value = float(number) * RATE_UNITS[unit]
    except ValueError:
        raise UsageError(f"--max-rate: bytes per second, e.g. 5M or 800K; got {text!r}") from None
    if value < 1:
        raise UsageError(f"--max-rate: must be positive; got {text!r}")
    return int(value)


def cmd_pull(args: argparse.Namespace) -> int:
    """Download a version's files from the swarm, verified against the signed manifest."""
    from node.client import NodeClient
    from node.core.swarm import parse_peer
    from node.pull import PullOptions, pull
    from node.sources import split_target

    default = args.node or os.environ.get("ATRIUM_NODE")
    if not default and not args.target.startswith(("http://", "https://")):
        try:
            default = _config(args).public_url
        except ConfigError as exc:
            raise UsageError(f"{args.target!r} does not name a node: give --node URL or set ATRIUM_NODE "
                             f"(there is no usable node in --data: {exc.detail})") from None
    try:
        node_url, target = split_target(args.target, default)
        peers = [parse_peer(p) for p in args.peer]
    except InvalidInput as exc:
        raise UsageError(exc.detail) from None
    root = Path(args.to)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--to: {root} is not a directory")
    options = PullOptions(root=root, layout=args.layout, peers=peers, listen=args.listen, key=args.key,
                          max_rate=_rate(args.max_rate) if args.max_rate else 0, peers_only=args.peers_only)
    token = args.token or os.environ.get("ATRIUM_TOKEN") or None

    async def run() -> int:
        async with NodeClient(node_url, token) as client:
            for path in await pull(client, target, options):
                out(str(path))
        return 0

    try:
        return run_async(run())
    except KeyboardInterrupt:
        print("atrium: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


# -- verify ------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    """Check files against a signed manifest, offline: signature first, then each file's size and SHA-256."""
    from node.core.manifests import ManifestError, check_file, files_to_check, open_manifest

    manifest_path = _existing_file(args.manifest, "--manifest")
    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--manifest: cannot read {manifest_path}: {exc.strerror}") from None
    manifest = open_manifest(data, trusted_keys=[args.key] if args.key else None)
    target = Path(args.path)
    failures = 0
    for path, expected in files_to_check(target, manifest):
        try:
            check_file(path, expected)
        except ManifestError as exc:
            print(f"FAILED {exc.detail}", file=sys.stderr)
            failures += 1
            continue
        out(f"OK     {expected.name}  {_human_size(expected.size)}  sha256:{expected.sha256}")
    from node.sources import signer_text

    signer = signer_text(manifest) if args.key else f"{signer_text(manifest)} (not pinned: pass --key NODE_ID to require it)"
    out(f"manifest of {manifest.air} signed by {signer}")
    if failures:
        raise CommandError(f"{failures} of {len(manifest.files)} files do not match the manifest")
    return 0


def _config(args: argparse.Namespace) -> Config:
    return load_config(resolve_data_dir(args.data))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def run_async(coro: Coroutine[Any, Any, int]) -> Any:
    return asyncio.run(coro)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS,
                        help="the node's data directory (default: $ATRIUM_DATA, else ./atrium-data)")
    parser = argparse.ArgumentParser(prog="atrium", description="Run and manage an Atrium node.",
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"atrium {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str,
                parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(func=func)
        return p

    p = command("init", cmd_init, "create a data directory with a commented node.toml, a key and a database")
    p.add_argument("dir", nargs="?", metavar="DIR", help="the data directory (default: --data)")
    p.add_argument("--name", default="atrium", help="the node's short name (AIR source); default: atrium")
    p.add_argument("--no-demo", action="store_true",
                   help="do not publish the two small demo models and their example images")

    p = command("serve", cmd_serve, "run the node's HTTP server until Ctrl+C or SIGTERM")
    p.add_argument("--host", help="listen address (overrides http.host)")
    p.add_argument("--port", type=int, help="listen port (overrides http.port; 0 picks a free one)")
    p.add_argument("--migrate", action="store_true", help="apply pending database migrations first")
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")

    db = sub.add_parser("db", help="database schema", parents=[common]).add_subparsers(
        dest="db_command", required=True, metavar="ACTION")
    command("upgrade", cmd_db_upgrade, "apply pending migrations", db)
    command("status", cmd_db_status, "show the schema revision (exit 1 when out of date)", db)

    users = sub.add_parser("users", help="user accounts", parents=[common]).add_subparsers(
        dest="users_command", required=True, metavar="ACTION")
    p = command("add", cmd_users_add, "create a user and print an API token for it", users)
    p.add_argument("name")
    p.add_argument("--role", default="member", help="admin, moderator, creator or member (default)")
    p.add_argument("--email")
    p.add_argument("--password", action="store_true", help="ask for a password at the terminal")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--token-name", default="cli", help="name of the API token (default: cli)")
    p.add_argument("--expires-days", type=int, help="the token expires after this many days")
    p.add_argument("--no-token", action="store_true", help="do not create an API token")
    command("list", cmd_users_list, "list users", users)
    p = command("set-role", cmd_users_update, "change a user's role", users)
    p.add_argument("name")
    p.add_argument("role")
    for action, text in (("disable", "disable a user (their tokens stop working)"), ("enable", "enable a user")):
        command(action, cmd_users_update, text, users).add_argument("name")
    p = command("passwd", cmd_users_update, "set a user's password", users)
    p.add_argument("name")
    p.add_argument("--password", action="store_true", help="ask for it at the terminal")
    p.add_argument("--password-stdin", action="store_true", help="read it from standard input")

    tokens = sub.add_parser("tokens", help="API tokens", parents=[common]).add_subparsers(
        dest="tokens_command", required=True, metavar="ACTION")
    p = command("create", cmd_tokens_create, "create an API token for a user and print it", tokens)
    p.add_argument("user")
    p.add_argument("--name", default="cli", help="a name to tell the token apart (default: cli)")
    p.add_argument("--expires-days", type=int, help="the token expires after this many days")
    p = command("list", cmd_tokens_list, "list API tokens (never their secrets)", tokens)
    p.add_argument("user", nargs="?")
    p = command("revoke", cmd_tokens_revoke, "revoke an API token by id", tokens)
    p.add_argument("id", type=int)

    command("plugins", cmd_plugins, "list installed plugins: available, enabled, or failed (with the reason)")

    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--node", metavar="URL",
                        help="the node to talk to (default: $ATRIUM_NODE, else the node in --data)")
    remote.add_argument("--token", metavar="TOKEN", help="an API token (default: $ATRIUM_TOKEN)")

    def client_command(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common, remote])
        p.set_defaults(func=func)
        return p

    p = client_command("publish", cmd_publish, "upload a model file (safetensors or GGUF) with example images "
                       "and publish it; prints the new version's AIR")
    p.add_argument("path", metavar="PATH", help="the model file")
    p.add_argument("--name", help="the model's name (for a new model)")
    p.add_argument("--type", help="the model type, e.g. Checkpoint, LORA, TextualInversion, VAE (for a new model)")
    p.add_argument("--base-model", required=True, metavar="BASE", help='e.g. "SD 1.5", "SDXL 1.0", "Flux.1 D"')
    p.add_argument("--version-name", default="v1", metavar="NAME", help="the version's name (default: v1)")
    p.add_argument("--description", metavar="TEXT",
                   help="the model's description (with --model-id: the new version's)")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="a tag of the model (repeatable)")
    p.add_argument("--trigger", action="append", default=[], metavar="WORD",
                   help="a trigger word of the version (repeatable)")
    p.add_argument("--nsfw-level", type=int, default=1, metavar="N",
                   help="content level of the model and its images: 1 PG (default), 2 PG-13, 4 R, 8 X, 16 XXX")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an example image, PNG, JPEG or WebP (repeatable)")
    p.add_argument("--model-id", type=int, metavar="ID", help="add a version to this existing model of yours")
    p.add_argument("--draft", action="store_true", help="upload everything but do not publish")

    p = client_command("models", cmd_models, "search the node's published models")
    p.add_argument("query", nargs="?", metavar="QUERY", help="words to search for in names, tags and descriptions")
    p.add_argument("--type", metavar="TYPE", help="only this model type, e.g. LORA")
    p.add_argument("--tag", metavar="TAG", help="only models with this tag")
    p.add_argument("--base-model", metavar="BASE", help='only models with a version for this base model')
    p.add_argument("--sort", metavar="SORT", help='"Highest Rated" (default), "Most Downloaded", "Newest", ...')
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N models (default: 20)")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")

    p = client_command("show", cmd_show, "describe a model version by its AIR, or a model by its id")
    p.add_argument("target", metavar="AIR_OR_MODEL_ID")
    p.add_argument("--json", action="store_true", help="print the model and the version as JSON")

    from node import cli_moderation

    cli_moderation.add_commands(sub, common, remote)

    from node.cli_ledger import add_commands as add_ledger_commands  # here: node.cli_ledger imports node.cli
    add_ledger_commands(sub, common, remote)

    p = command("follow", cmd_follow, "follow another node: mirror its signed catalog log")
    p.add_argument("url", metavar="URL", help="the node's base URL, e.g. https://models.example.org")
    p = command("unfollow", cmd_unfollow, "stop following a node")
    p.add_argument("peer", metavar="URL_OR_ID")
    p = command("peers", cmd_peers, "list followed nodes: state, entries synced, lag, last error")
    p.add_argument("--resume", metavar="URL_OR_ID", help="let a halted peer sync again")
    p.add_argument("--json", action="store_true", help="print them as JSON, with any evidence")

    p = command("followers", cmd_followers, "list the nodes that follow this one; approve or block them")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--approve", type=int, metavar="ID", help="let this follower read the log and get pushes")
    group.add_argument("--block", type=int, metavar="ID", help="refuse this follower")
    group.add_argument("--hold", type=int, metavar="ID", help="set this follower back to pending")
    p.add_argument("--json", action="store_true", help="print them as JSON")

    from node.cli_keys import add_commands as add_key_commands  # here: node.cli_keys imports node.cli

    add_key_commands(sub, common)

    p = client_command("pull", cmd_pull, "download a model version's files from the swarm (peers and the node's "
                       "web seed), verify them against the signed manifest and put them where A1111 or ComfyUI "
                       "look for them; prints each file's path")
    p.add_argument("target", metavar="AIR|URL|HASH",
                   help="an AIR (urn:air:...), a URL of a model, version or download on a node, or a file hash")
    p.add_argument("--to", default=".", metavar="DIR",
                   help="the UI's folder (with --layout) or the folder for the files (default: the current one)")
    p.add_argument("--layout", default="flat", choices=["a1111", "comfyui", "flat"],
                   help="a1111: models/Stable-diffusion, models/Lora, models/VAE, embeddings; comfyui: "
                        "models/checkpoints, models/loras, models/vae, models/embeddings; flat (default): DIR itself")
    p.add_argument("--peer", action="append", default=[], metavar="HOST:PORT",
                   help="also download from this BitTorrent peer (repeatable)")
    p.add_argument("--listen", default="0.0.0.0:0", metavar="HOST:PORT",
                   help="where this pull accepts peers while it runs (default: any address, a free port)")
    p.add_argument("--key", metavar="NODE_ID", help="require the manifest to be signed by this node id (z6Mk...)")
    p.add_argument("--max-rate", metavar="RATE", help="download at most this many bytes per second, e.g. 5M")
    p.add_argument("--peers-only", action="store_true",
                   help="download only from BitTorrent peers, not from the node's web seed (HTTP)")

    from node.cli_mirror import add_commands as add_mirror_commands  # here: it imports node.cli

    add_mirror_commands(sub, common, remote)

    p = command("verify", cmd_verify, "check downloaded files against a version's signed manifest (offline)")
    p.add_argument("path", metavar="PATH", help="a downloaded file, or a folder holding the version's files")
    p.add_argument("--manifest", required=True, metavar="FILE",
                   help="the manifest (GET /api/node/v1/versions/ID/manifest)")
    p.add_argument("--key", metavar="NODE_ID", help="require a signature by this node id (z6Mk...)")

    from node.cli_jobs import add_commands as add_job_commands  # here: node.cli_jobs imports node.cli

    add_job_commands(sub, common, remote)

    from node.cli_generate import add_commands as add_generate_commands  # here: it imports node.cli

    add_generate_commands(sub, common, remote)

    config = sub.add_parser("config", help="configuration", parents=[common]).add_subparsers(
        dest="config_command", required=True, metavar="ACTION")
    command("check", cmd_config_check, "validate node.toml, the key file and the enabled plugins", config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "data"):
        args.data = None
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"atrium: config error: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    except (PluginLoadError, UsageError) as exc:
        print(f"atrium: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    except AtriumError as exc:
        print(f"atrium: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`atrium models --json | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
