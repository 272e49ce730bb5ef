"""The `atrium` command's user and token administration, as an operator runs it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import atrium, http_json, wait_healthy


@pytest.fixture
def data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert atrium("init", str(data)).returncode == 0
    return data


def test_users_add_prints_the_token_alone_on_the_last_line(data: Path) -> None:
    result = atrium("users", "add", "alice", "--role", "admin", data=data)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"atr_[A-Za-z0-9_-]{43}", result.stdout.splitlines()[-1])
    listed = atrium("users", "list", data=data).stdout
    assert re.search(r"^1\s+alice\s+admin\s+active\s+no", listed, re.M), listed


def test_users_add_with_a_password_from_stdin_allows_password_login(data: Path, serve) -> None:
    result = atrium("users", "add", "bob", "--password-stdin", "--no-token", data=data,
                    stdin="a long enough password\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "created user bob (member)"
    server = serve(data)
    wait_healthy(server)
    status, body = http_json("POST", server.url + "/api/node/v1/auth/login",
                             {"username": "bob", "password": "a long enough password"})
    assert status == 201 and body["user"]["username"] == "bob"


def test_users_add_refuses_a_taken_name_and_an_unknown_role(data: Path) -> None:
    atrium("users", "add", "alice", data=data)
    taken = atrium("users", "add", "ALICE", data=data)
    assert taken.returncode == 1 and taken.stderr.strip() == "atrium: the username 'ALICE' is taken"
    bad_role = atrium("users", "add", "carol", "--role", "king", data=data)
    assert bad_role.returncode == 1 and "unknown role 'king'" in bad_role.stderr


def test_tokens_create_list_and_revoke(data: Path) -> None:
    atrium("users", "add", "alice", "--no-token", data=data)
    created = atrium("tokens", "create", "alice", "--name", "laptop", "--expires-days", "30", data=data)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.splitlines()[-1]
    assert secret.startswith("atr_")
    listed = atrium("tokens", "list", "alice", data=data).stdout
    assert secret not in listed
    token_id = re.search(r"^(\d+)\s+alice\s+laptop\s+atr_\S+\s+active", listed, re.M).group(1)
    revoked = atrium("tokens", "revoke", token_id, data=data)
    assert revoked.returncode == 0 and "revoked token" in revoked.stdout
    assert re.search(r"laptop\s+atr_\S+\s+revoked", atrium("tokens", "list", data=data).stdout)
    missing = atrium("tokens", "revoke", "999", data=data)
    assert missing.returncode == 1 and "no token 999" in missing.stderr


def test_user_role_and_state_changes(data: Path) -> None:
    atrium("users", "add", "root", "--role", "admin", "--no-token", data=data)
    atrium("users", "add", "carol", "--no-token", data=data)
    assert "role creator" in atrium("users", "set-role", "carol", "creator", data=data).stdout
    assert "disabled" in atrium("users", "disable", "carol", data=data).stdout
    assert "active" in atrium("users", "enable", "carol", data=data).stdout
    last_admin = atrium("users", "set-role", "root", "member", data=data)
    assert last_admin.returncode == 1 and "last active admin" in last_admin.stderr


def test_commands_refuse_an_unmigrated_database(data: Path) -> None:
    (data / "atrium.db").unlink()
    result = atrium("users", "list", data=data)
    assert result.returncode == 1 and "atrium db upgrade" in result.stderr
    upgraded = atrium("db", "upgrade", data=data)
    assert upgraded.returncode == 0 and "upgraded the database schema from nothing" in upgraded.stdout
    assert atrium("users", "list", data=data).returncode == 0


def test_usage_errors_exit_2(data: Path) -> None:
    assert atrium("users", data=data).returncode == 2
    assert atrium("frobnicate").returncode == 2


def test_every_command_accepts_data_before_or_after_the_command(data: Path) -> None:
    import subprocess
    import sys

    before = subprocess.run([sys.executable, "-m", "node", "--data", str(data), "db", "status"],
                            capture_output=True, text=True)
    after = atrium("db", "status", data=data)
    assert before.returncode == after.returncode == 0
    assert before.stdout == after.stdout


def test_a_postgresql_database_that_does_not_exist_is_one_config_line(data: Path) -> None:
    (data / "node.toml").write_text('[database]\nurl = "postgresql://postgres@127.0.0.1:5432/atrium_no_such_db"\n')
    result = atrium("db", "status", data=data)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atrium: config error: database.url: cannot open the database:")
    assert "atrium_no_such_db" in lines[0]


def test_config_check_validates_the_database_url(data: Path) -> None:
    assert atrium("config", "check", data=data).returncode == 0
    (data / "node.toml").write_text('[database]\nurl = "mysql://root@127.0.0.1/x"\n')
    result = atrium("config", "check", data=data)
    assert result.returncode == 2 and "database.url: unsupported database 'mysql'" in result.stderr
