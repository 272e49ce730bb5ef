"""Concept membranes, prompt audit, content levels, reports and takedowns (needs the 'ml' extra).

The prompt audit's lists and patterns come from `[plugins.moderation]` (plugins/moderation/audit.py);
they are validated when the node starts, so a broken pattern stops it with a message naming the pattern.
Reports, moderator actions and appeals are core catalog behaviour (node/core/reports.py) and work
with this plugin disabled.
"""

from __future__ import annotations

import asyncio
from typing import Any

from node.core.hookspecs import hookimpl
from node.core.moderation import ImageLabel, Violation
from node.core.plugins import require_modules

require_modules("moderation")

from plugins.moderation.audit import AuditPolicy, check_prompt  # noqa: E402  (after the extra is checked)

NAME = "moderation"
# The node's audit rules and image scorer, set at startup (one node per process; tests start their own).
policy: AuditPolicy = AuditPolicy.from_table({})
scorer: Any = None  # node.core.scoring.ImageScorer when [moderation] image_scorer is set


@hookimpl
def atrium_startup(node: Any) -> None:
    global policy, scorer
    policy = AuditPolicy.from_table(node.config.plugin_table(NAME), f"plugins.{NAME}")
    scorer = node.ingest.scorer


def requested_level(context: Any) -> Any:
    """The content level a generation request asks for, if it names one."""
    request = getattr(context, "request", None)
    if not isinstance(request, dict):
        return None
    return request.get("nsfw_level", request.get("nsfwLevel"))


@hookimpl
async def atrium_check_prompt(prompt: str, negative: str, context: Any) -> Any:
    """The prompt's audit violations (the negative prompt names what to avoid: not audited)."""
    found = await asyncio.to_thread(check_prompt, policy, prompt, requested_level(context))
    return [Violation(rule=v.rule, message=v.message) for v in found]


@hookimpl
async def atrium_check_image(image: Any, metadata: dict[str, Any], context: Any) -> Any:
    """With an image scorer: the generated image's score as a label, and a violation when the level
    it scores at is above `max_generation_level` (the image is discarded)."""
    if scorer is None:
        return []
    score = await asyncio.to_thread(scorer.score, image)
    level = scorer.level_for(score)
    found: list[Any] = [ImageLabel("nsfw", round(score, 4))]
    over = policy.check_level(level)
    if over is not None:
        found.append(Violation(rule=over.rule, message=f"the generated image scores as {over.term} "
                               f"(nsfw {score:.2f}); {over.message.split('; ')[0]}"))
    return found
