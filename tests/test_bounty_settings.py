"""The bounties plugin's settings table: every key is documented, and a wrong one stops the node."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from node.core.config import ConfigError, parse_table
from plugins.bounties.bounties import BountySettings

DOCS = Path(__file__).parent.parent / "docs"


def test_every_bounties_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text() + (DOCS / "bounties.md").read_text()
    missing = [f.name for f in dataclasses.fields(BountySettings) if f"`plugins.bounties.{f.name}`" not in text]
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_a_wrong_bounties_setting_is_a_config_error_naming_the_key() -> None:
    assert parse_table(BountySettings, {"grace_days": 0}, "plugins.bounties").grace_days == 0
    with pytest.raises(ConfigError, match="plugins.bounties.grace_days: must be at most 365"):
        parse_table(BountySettings, {"grace_days": 400}, "plugins.bounties")
    with pytest.raises(ConfigError, match="plugins.bounties.fee: unknown key"):
        parse_table(BountySettings, {"fee": 5}, "plugins.bounties")
