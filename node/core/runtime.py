"""The running node: configuration, identity, database, accounts, catalog, distribution and plugins,
opened and closed together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from node import __version__
from node.core import keychain
from node.core.accounts import Accounts
from node.core.blobs import BlobStore
from node.core.catalog import Catalog
from node.core.config import Config
from node.core.db import Database
from node.core.distribution import Distribution
from node.core.identity import NodeIdentity, load_identity
from node.core.ingest import Ingest
from node.core.jobs import Jobs, collect_kinds
from node.core.ledger import Ledger
from node.core.plugins import PluginHost
from node.core.reports import Reports
from node.core.scoring import load_scorer
from node.core.swarm import Swarm, clean_fetch_dirs

log = logging.getLogger(__name__)

# How often the node deletes expired uploads and temp files left by interrupted writes.
HOUSEKEEPING_INTERVAL = 600.0
TEMP_FILE_MAX_AGE = 3600.0


@dataclass
class Node:
    """What plugins and handlers are given: the node's services."""

    config: Config
    identity: NodeIdentity
    db: Database
    accounts: Accounts
    plugins: PluginHost
    blobs: BlobStore
    catalog: Catalog
    ingest: Ingest
    distribution: Distribution
    swarm: Swarm
    reports: Reports
    ledger: Ledger
    federation: Any = None  # federation.FederationLog, attached by the delivery layer (node/app.py, cli)
    jobs: Jobs = None  # type: ignore[assignment]  # set by open_node
    version: str = __version__

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def name(self) -> str:
        return self.config.node.name


def plugin_host_for(config: Config) -> PluginHost:
    """A plugin host for the config's enabled plugins, names checked (nothing imported yet)."""
    host = PluginHost(config.plugins.enabled)
    host.check_names(config.plugin_tables)
    return host


async def housekeeping(node: Node, interval: float = HOUSEKEEPING_INTERVAL) -> None:
    """Delete expired resumable uploads and stale temp files, now and then every `interval` seconds."""
    while True:
        try:
            expired = await node.ingest.expire()
            removed = await asyncio.to_thread(node.blobs.clean_temp, TEMP_FILE_MAX_AGE)
            if expired or removed:
                log.info("housekeeping: %d expired uploads and %d temp files removed", expired, removed)
        except Exception:  # a failed round must not stop the next one
            log.exception("housekeeping failed")
        await asyncio.sleep(interval)


@asynccontextmanager
async def open_node(config: Config, *, migrate: bool = False, plugins: PluginHost | None = None,
                    attach: Sequence[Callable[[Node], Any]] = ()) -> AsyncIterator[Node]:
    """Open everything a node needs, run the plugins' startup hooks, and close it all on exit.

    Raises ConfigError (bad key file, unreachable database), SchemaOutOfDate (unless `migrate`)
    and PluginLoadError before anything is started.
    """
    identity = load_identity(config.key_path)
    if plugins is None:
        plugins = plugin_host_for(config)
        plugins.load(strict=True)
    kinds = collect_kinds(plugins)
    db = Database.from_config(config)
    started: list[str] = []
    blobs = BlobStore(config.blobs_path)
    catalog = Catalog(db, config.node.name)
    distribution = Distribution(db, blobs, identity, config.node.name)
    node = Node(config=config, identity=identity, db=db, accounts=Accounts(db, config.accounts), plugins=plugins,
                blobs=blobs, catalog=catalog, ingest=Ingest(db, blobs, catalog, config.storage),
                distribution=distribution, swarm=Swarm(config.swarm, blobs, config.swarm_path, distribution),
                reports=Reports(db, catalog, identity.node_id, config.moderation.reports_per_hour),
                ledger=Ledger(db, config.ledger), jobs=Jobs(db, config, kinds))
    node.jobs.node = node
    try:
        if migrate:
            status = await db.upgrade()
            log.info("database schema at %s", status.current)
        else:
            await db.require_current_schema()
        async with db.read_session() as session:  # a rotation interrupted before its key file moved
            await keychain.complete_rotation(config.key_path, identity, session)
        distribution.key_path = config.key_path  # it adopts rotations other processes commit
        blobs.prepare()
        node.ingest.scorer = await asyncio.to_thread(load_scorer, config.moderation)
        for extension in attach:  # parts outside node/core (the federation log) hook in before plugins start
            extension(node)
        for name in plugins.loaded:
            await plugins.call_each("atrium_startup", [name], node=node)
            started.append(name)
        if config.swarm.enabled:
            await asyncio.to_thread(clean_fetch_dirs, blobs)
            await node.swarm.start()  # before catch_up, so that its new torrents are seeded at once
        chores = asyncio.create_task(housekeeping(node), name="atrium-housekeeping")
        node.distribution.start()
        await node.jobs.start()  # after the plugins started: their job kinds may use what startup opened
        try:
            yield node
        finally:
            await node.jobs.close()
            await node.distribution.close()
            await node.swarm.close()
            chores.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chores
    finally:
        try:
            await plugins.call_each("atrium_shutdown", list(reversed(started)), node=node)
        finally:
            await db.close()
