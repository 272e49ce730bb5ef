"""Concept membranes, prompt audit, content levels, reports and takedowns (needs the 'ml' extra).

The prompt audit's lists and patterns come from `[plugins.moderation]` (plugins/moderation/audit.py);
they are validated when the node starts, so a broken pattern stops it with a message naming the pattern.
Reports, moderator actions and appeals are core catalog behaviour (node/core/reports.py) and work
with this plugin disabled.
"""

from __future__ import annotations

from typing import Any

from node.core.hookspecs import hookimpl
from node.core.plugins import require_modules

require_modules("moderation")

from plugins.moderation.audit import AuditPolicy  # noqa: E402  (after the check that names the missing extra)

NAME = "moderation"
# The node's audit rules, set at startup (one node per process; tests start their own).
policy: AuditPolicy = AuditPolicy.from_table({})


@hookimpl
def atrium_startup(node: Any) -> None:
    global policy
    policy = AuditPolicy.from_table(node.config.plugin_table(NAME), f"plugins.{NAME}")
