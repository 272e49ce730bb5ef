"""`atrium ledger` and `atrium bounty` against a real `atrium serve` with the bounties plugin enabled."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.catalog_fixtures import A1111_PARAMETERS, png_with_parameters, safetensors_bytes
from tests.conftest import atrium, start_serve, wait_healthy

FUTURE = (datetime.now(UTC) + timedelta(days=20)).date().isoformat()


@dataclass
class Served:
    url: str
    data: Path
    tokens: dict[str, str]

    def run(self, who: str | None, *args: str) -> tuple[int, str, str]:
        extra = ["--node", self.url] + (["--token", self.tokens[who]] if who else [])
        done = atrium(*args, *extra, env={"ATRIUM_TOKEN": ""})
        return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("ledger") / "data"
    assert atrium("init", str(data)).returncode == 0
    tokens = {}
    for name, role in (("admin1", "admin"), ("alice", "member"), ("bobby", "member"), ("carol", "creator")):
        added = atrium("users", "add", name, "--role", role, data=data)
        assert added.returncode == 0, added.stderr
        tokens[name] = added.stdout.splitlines()[-1]
    server = start_serve(data, env={"ATRIUM_PLUGINS_ENABLED": "bounties"})
    try:
        wait_healthy(server)
        yield Served(url=server.url, data=data, tokens=tokens)
    finally:
        server.proc.kill()
        server.proc.communicate(timeout=10)


def test_a_bounty_from_the_command_line(served: Served, tmp_path: Path) -> None:
    for user, amount in (("alice", "100"), ("bobby", "50")):
        code, out, err = served.run("admin1", "ledger", "grant", user, amount, "--reason", "seed money")
        assert code == 0, err
        assert re.match(rf"transaction \d+: Grant of {amount} to {user}", out)
    code, out, err = served.run("alice", "bounty", "create", "--name", "Watercolour LoRA", "--amount", "60",
                                "--expires", FUTURE, "--type", "LoraCreation", "--entry-limit", "2", "--tag", "paint")
    assert code == 0, err
    bounty = out.strip().splitlines()[-1]
    assert bounty.isdigit()
    assert served.run("bobby", "bounty", "contribute", bounty, "30")[0] == 0

    image = tmp_path / "entry.png"
    image.write_bytes(png_with_parameters(A1111_PARAMETERS.format(model_hash="abcdef1234", lora_hash="0123456789")))
    code, out, err = served.run("carol", "bounty", "enter", bounty, "--image", str(image), "--note", "my take")
    assert code == 0, err
    entry = out.strip().splitlines()[-1]
    lora = tmp_path / "watercolour.safetensors"
    lora.write_bytes(safetensors_bytes(seed=11))
    code, out, err = served.run("carol", "publish", str(lora), "--name", "Watercolour", "--type", "LORA",
                                "--base-model", "SD 1.5")
    assert code == 0, err
    air = out.strip().splitlines()[-1]
    code, out, err = served.run("carol", "bounty", "enter", bounty, "--version", air)
    assert code == 0, err

    code, out, err = served.run("bobby", "bounty", "award", bounty, entry)
    assert code == 0 and f"30 awarded to entry {entry}" in out, err
    code, _, err = served.run("bobby", "bounty", "award", bounty, entry)
    assert code == 1 and "already awarded" in err

    code, out, _ = served.run(None, "bounty", "show", bounty)
    assert code == 0 and "pool 60" in out and "bobby: 30, awarded" in out and "my take" in out
    code, out, _ = served.run(None, "bounty", "list", "--state", "open")
    assert code == 0 and "Watercolour LoRA" in out and "LoraCreation" in out
    code, out, _ = served.run("carol", "ledger", "balance")
    assert (code, out.strip()) == (0, "carol: 30 coin")
    code, out, _ = served.run("carol", "ledger", "history")
    assert code == 0 and "BountyAward" in out and "+30" in out
    code, out, _ = served.run("admin1", "bounty", "expire")
    assert (code, out.strip()) == (0, "no bounty is due")


def test_a_tip_with_an_idempotency_key_runs_once(served: Served) -> None:
    assert served.run("admin1", "ledger", "grant", "alice", "10")[0] == 0
    before = int(served.run("bobby", "ledger", "balance")[1].split()[1].replace(",", ""))
    for _ in range(2):
        code, _, err = served.run("alice", "ledger", "tip", "bobby", "3", "--idempotency-key", "thanks-1")
        assert code == 0, err
    assert served.run("bobby", "ledger", "balance")[1].strip() == f"bobby: {before + 3} coin"


@pytest.mark.parametrize(("who", "args", "code", "message"), [
    ("alice", ("ledger", "grant", "bobby", "5"), 1, "admin role"),
    ("alice", ("ledger", "balance", "bobby"), 1, "admin role"),
    ("alice", ("ledger", "tip", "bobby", "0"), 2, "positive whole number"),
    ("alice", ("ledger", "tip", "bobby", "999999999"), 1, "lower than"),
    ("alice", ("bounty", "contribute", "424242", "5"), 1, "no bounty 424242"),
    ("alice", ("bounty", "enter", "1"), 2, "--image FILE or --version AIR"),
    ("alice", ("bounty", "create", "--name", "x", "--amount", "5", "--expires", "soon"), 1, "expires"),
    ("alice", ("ledger", "daily"), 1, "no daily grant"),
    (None, ("ledger", "balance"), 2, "needs an API token"),
])
def test_bad_ledger_commands_exit_non_zero_with_one_clear_line(served: Served, who: str | None,
                                                               args: tuple[str, ...], code: int, message: str) -> None:
    got, _, err = served.run(who, *args)
    assert got == code and message in err, err
    assert "Traceback" not in err
