"""node.toml: defaults, validation with one-line errors, environment overrides, and `atrium init`."""

from __future__ import annotations

import re
import stat
import tomllib
from pathlib import Path

import pytest

from node.core.config import (ConfigError, config_from_mapping, documented_keys, load_config,
                              render_template)
from tests.conftest import atrium, write_node

DOCS = Path(__file__).parent.parent / "docs"


def test_an_empty_node_toml_gives_the_embedded_defaults(tmp_path: Path) -> None:
    config = load_config(write_node(tmp_path, ""), env={})
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8000)
    assert config.database_url == f"sqlite+aiosqlite:///{(tmp_path / 'atrium.db').resolve()}"
    assert config.plugins.enabled == []
    assert config.public_url == "http://127.0.0.1:8000"


@pytest.mark.parametrize("toml, message", [
    ("[http]\nprot = 80\n", "node.toml: http.prot: unknown key"),
    ("[http]\nport = \"eighty\"\n", "node.toml: http.port: expected an integer, got 'eighty'"),
    ("[http]\nport = 70000\n", "node.toml: http.port: must be at most 65535"),
    ("[http]\naccess_log = 1\n", "node.toml: http.access_log: expected true or false, got 1"),
    ("[accounts]\nregistration = \"maybe\"\n", "node.toml: accounts.registration: must be one of open, closed"),
    ("[node]\nname = \"My Node\"\n", "node.toml: node.name: must be 1-63 lowercase letters"),
    ("[plugins]\nenabled = \"generation\"\n", "node.toml: plugins.enabled: expected a list of strings"),
    ("[htttp]\nport = 1\n", "node.toml: [htttp]: unknown section"),
    ("http = 3\n", "node.toml: http: expected a table"),
])
def test_a_bad_key_is_reported_naming_the_key_and_the_problem(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_node(tmp_path, toml), env={})
    assert err.value.detail.startswith(message)
    assert "\n" not in err.value.detail


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        load_config(write_node(tmp_path, "[http]\nport = = 3\n"), env={})


def test_a_missing_node_toml_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run `atrium init"):
        load_config(tmp_path / "nowhere", env={})


def test_environment_overrides_the_file_with_typed_values(tmp_path: Path) -> None:
    data = write_node(tmp_path, "[http]\nport = 9000\n")
    config = load_config(data, env={"ATRIUM_HTTP_PORT": "9100", "ATRIUM_HTTP_ACCESS_LOG": "no",
                                    "ATRIUM_PLUGINS_ENABLED": "bounties, generation",
                                    "ATRIUM_DATABASE_URL": "postgresql://u@db/atrium",
                                    "ATRIUM_DATA": "ignored", "ATRIUM_TEST_PG_DSN": "ignored"})
    assert config.http.port == 9100
    assert config.http.access_log is False
    assert config.plugins.enabled == ["bounties", "generation"]
    assert config.database_url == "postgresql+asyncpg://u@db/atrium"


def test_a_list_override_may_be_written_as_a_toml_array(tmp_path: Path) -> None:
    config = load_config(write_node(tmp_path), env={"ATRIUM_PLUGINS_ENABLED": '["a", "b"]'})
    assert config.plugins.enabled == ["a", "b"]


@pytest.mark.parametrize("var, value, message", [
    ("ATRIUM_HTTP_PORT", "abc", "ATRIUM_HTTP_PORT: expected an integer, got 'abc'"),
    ("ATRIUM_HTTP_PROT", "1", "ATRIUM_HTTP_PROT: no key http.prot"),
    ("ATRIUM_LOGGING_LEVEL", "loud", "ATRIUM_LOGGING_LEVEL: must be one of debug, info, warning, error"),
    ("ATRIUM_METRICS_ENABLED", "maybe", "ATRIUM_METRICS_ENABLED: expected true or false"),
])
def test_a_bad_environment_override_names_the_variable(tmp_path: Path, var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_node(tmp_path), env={var: value})
    assert err.value.detail.startswith(message)


def test_unsupported_database_urls_are_refused(tmp_path: Path) -> None:
    config = config_from_mapping(tmp_path, {"database": {"url": "mysql://x@y/z"}}, env={})
    with pytest.raises(ConfigError, match="database.url: unsupported database 'mysql'"):
        _ = config.database_url


def test_the_template_documents_every_key_and_parses_back_to_the_defaults(tmp_path: Path) -> None:
    text = render_template({"node": {"name": "demo"}})
    for section, key, _default, _doc in documented_keys():
        assert re.search(rf"^#?{key} = ", text, re.M), f"{section}.{key} missing from the template"
    uncommented = "\n".join(line.lstrip("#") if re.match(r"^#\w+ = ", line) else line
                            for line in text.splitlines())
    config = config_from_mapping(tmp_path, tomllib.loads(uncommented), env={})
    assert config.node.name == "demo"
    assert config.http.port == 8000


def test_every_config_key_is_documented_in_docs_configuration() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [f"{s}.{k}" for s, k, _, _ in documented_keys() if f"`{s}.{k}`" not in text]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def test_init_writes_a_commented_config_a_private_key_and_a_migrated_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = atrium("init", str(data), "--name", "demo-node")
    assert result.returncode == 0, result.stderr
    node_id = result.stdout.strip().splitlines()[-1].removeprefix("node id: ")
    assert re.fullmatch(r"z6Mk[1-9A-HJ-NP-Za-km-z]{44}", node_id)
    assert stat.S_IMODE((data / "node.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert load_config(data, env={}).node.name == "demo-node"
    status = atrium("db", "status", data=data)
    assert status.returncode == 0 and "up to date" in status.stdout


def test_init_on_an_existing_node_changes_nothing_and_prints_the_same_id(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = atrium("init", str(data))
    before = (data / "node.key").read_bytes()
    second = atrium("init", str(data))
    assert second.returncode == 0
    assert "nothing changed" in second.stdout
    assert second.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]
    assert (data / "node.key").read_bytes() == before


def test_init_uses_ATRIUM_DATA_when_no_directory_is_given(tmp_path: Path) -> None:
    result = atrium("init", env={"ATRIUM_DATA": str(tmp_path / "from-env")})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-env" / "node.toml").exists()


def test_init_refuses_a_bad_node_name_with_exit_code_2(tmp_path: Path) -> None:
    result = atrium("init", str(tmp_path / "d"), "--name", "Not A Slug")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("atrium: config error: node.toml: node.name:")
    assert not (tmp_path / "d" / "node.toml").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda d: (d / "node.toml").write_text("[http]\nport = \"x\"\n"), "node.toml: http.port: expected an integer"),
    (lambda d: (d / "node.key").write_text("not a key"), "identity.key_file:"),
    (lambda d: (d / "node.key").unlink(), "identity.key_file:"),
    (lambda d: (d / "node.key").chmod(0o644), "identity.key_file:"),
])
def test_serve_with_a_bad_config_prints_one_line_and_exits_2(tmp_path: Path, setup, message: str) -> None:
    data = tmp_path / "data"
    assert atrium("init", str(data)).returncode == 0
    setup(data)
    result = atrium("serve", "--port", "0", data=data, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_an_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    atrium("init", str(data))
    (data / "node.key").unlink()
    (data / "node.key").mkdir()
    result = atrium("config", "check", data=data)
    assert result.returncode == 2
    assert "identity.key_file: cannot read" in result.stderr
