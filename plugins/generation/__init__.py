"""Text-to-image and image-to-image generation with diffusers (needs the 'ml' extra)."""

from node.core.plugins import require_modules

require_modules("generation")
