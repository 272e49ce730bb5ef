"""LoRA training with peft on an image set (needs the 'ml' extra)."""

from node.core.plugins import require_modules

require_modules("training")
