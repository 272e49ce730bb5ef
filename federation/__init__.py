"""Federation: the node's signed catalog log, the nodes it follows, and syncing their logs.

`attach(node)` gives a running node its federation: every catalog change then appends a signed entry
in the change's own transaction, and `node.federation.syncer.run()` (started by `atrium serve`) pulls
the followed nodes' logs, and `node.federation.mirroring.run()` keeps copies of their files by policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federation.followers import Followers
from federation.log import FederationLog
from federation.mirror import MirroredIndex
from federation.mirroring import Mirroring
from federation.peers import Peers
from federation.sync import Syncer


@dataclass
class Federation:
    log: FederationLog
    peers: Peers
    syncer: Syncer
    mirror: MirroredIndex
    followers: Followers
    mirroring: Mirroring


def attach(node: Any) -> Federation:
    log = FederationLog(node.db, node.identity, node.name, node.config.public_url, key_path=node.config.key_path)
    peers = Peers(node.db, node.config.federation)
    followers = Followers(node.db, node.identity, node.config.federation, log)
    node.catalog.journals.append(log.journal)
    node.reports.label_journals.append(log.journal_label)
    log.on_append.append(followers.push_soon)
    syncer = Syncer(node.db, log, peers, node.config.federation, public_url=node.config.public_url)
    mirroring = Mirroring(node.db, node.blobs, node.swarm, node.config.mirror, node.config.federation)
    syncer.on_applied.append(mirroring.on_applied)
    node.federation = Federation(log=log, peers=peers, syncer=syncer, mirror=MirroredIndex(node.db),
                                 followers=followers, mirroring=mirroring)
    return node.federation


__all__ = ["Federation", "FederationLog", "Followers", "MirroredIndex", "Mirroring", "Peers", "Syncer", "attach"]
