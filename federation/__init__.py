"""Federation: the node's signed catalog log, its checkpoints and proofs (and, later, peers and sync).

`attach(node)` gives a running node its log: every catalog change then appends a signed entry in the
change's own transaction.
"""

from __future__ import annotations

from typing import Any

from federation.log import FederationLog


def attach(node: Any) -> FederationLog:
    log = FederationLog(node.db, node.identity, node.name)
    node.catalog.journals.append(log.journal)
    node.federation = log
    return log


__all__ = ["FederationLog", "attach"]
