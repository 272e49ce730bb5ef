"""Concept membranes, prompt audit, content levels, reports and takedowns (needs the 'ml' extra)."""

from node.core.plugins import require_modules

require_modules("moderation")
