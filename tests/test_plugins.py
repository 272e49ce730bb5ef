"""The plugin host: entry points, enable/disable, load failures, async hooks, plugin routes and config."""

from __future__ import annotations

import re
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from node.app import create_app
from node.core import hookspecs
from node.core.config import Config
from node.core.errors import ConfigError, PluginLoadError
from node.core.plugins import PluginHost, require_modules
from tests.conftest import atrium, make_config, write_node

DOCS = Path(__file__).parent.parent / "docs"
BUILT_IN = ["bounties", "generation", "moderation", "training"]

GOOD_PLUGIN = '''
"""Says hello over HTTP and records its lifecycle."""
from dataclasses import dataclass
from aiohttp import web
from node.core.config import key, parse_table
from node.core.hookspecs import hookimpl

events = []

@dataclass
class Settings:
    greeting: str = key("hello", "What to say.")

@hookimpl
async def atrium_startup(node):
    settings = parse_table(Settings, node.config.plugin_table("{name}"), "plugins.{name}")
    events.append(("startup", settings.greeting))

@hookimpl
async def atrium_shutdown(node):
    events.append(("shutdown",))

@hookimpl
def atrium_routes(routes):
    @routes.get("/api/{name}/v1/hello")
    async def hello(request):
        return web.json_response({{"events": events}})
'''


def make_distribution(root: Path, name: str, source: str) -> Path:
    """A real installed distribution on disk (module + dist-info with an entry point)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(source)
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[atrium.plugins]\n{name} = {name}\n")
    return root


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path (and PYTHONPATH) holding third-party plugin distributions."""
    root = tmp_path / "site"
    make_distribution(root, "hello_plugin", GOOD_PLUGIN.format(name="hello_plugin"))
    make_distribution(root, "broken_plugin", "raise ImportError('cannot import name Thing from nowhere')\n")
    make_distribution(root, "marker_plugin", "import pathlib, os\npathlib.Path(os.environ['MARKER']).touch()\n")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in ("hello_plugin", "broken_plugin", "marker_plugin"):
        sys.modules.pop(name, None)


def env_for(plugin_path: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": f"{plugin_path}:{Path(__file__).parent.parent}", **extra}


def test_the_four_built_in_plugins_are_found_through_the_entry_point_group(tmp_path: Path) -> None:
    data = tmp_path / "data"
    atrium("init", str(data))
    result = atrium("plugins", data=data)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert {name: rows[name] for name in BUILT_IN} == {name: "available" for name in BUILT_IN}


def test_enabled_built_in_plugins_load(tmp_path: Path) -> None:
    config = make_config(write_node(tmp_path), plugins={"enabled": BUILT_IN})
    host = PluginHost(config.plugins.enabled)
    host.load(strict=True)
    assert host.loaded == BUILT_IN


def test_a_disabled_plugin_is_never_imported(tmp_path: Path, plugin_path: Path) -> None:
    marker = tmp_path / "imported"
    data = tmp_path / "data"
    atrium("init", str(data))
    listed = atrium("plugins", data=data, env=env_for(plugin_path, MARKER=str(marker)))
    assert re.search(r"^marker_plugin\s+available", listed.stdout, re.M), listed.stdout
    assert not marker.exists()
    (data / "node.toml").write_text('[plugins]\nenabled = ["marker_plugin"]\n')
    enabled = atrium("plugins", data=data, env=env_for(plugin_path, MARKER=str(marker)))
    assert re.search(r"^marker_plugin\s+enabled", enabled.stdout, re.M), enabled.stdout
    assert marker.exists()


def test_a_plugin_that_fails_to_load_is_listed_as_failed_with_the_reason(tmp_path: Path, plugin_path: Path) -> None:
    data = tmp_path / "data"
    atrium("init", str(data))
    (data / "node.toml").write_text('[plugins]\nenabled = ["broken_plugin"]\n')
    result = atrium("plugins", data=data, env=env_for(plugin_path))
    assert result.returncode == 1
    assert re.search(r"^broken_plugin\s+failed\s+broken_plugin\s+ImportError: cannot import name Thing",
                     result.stdout, re.M), result.stdout


def test_an_enabled_plugin_that_fails_to_load_stops_the_node_with_a_clear_message(tmp_path: Path,
                                                                                  plugin_path: Path) -> None:
    data = tmp_path / "data"
    atrium("init", str(data))
    (data / "node.toml").write_text('[plugins]\nenabled = ["broken_plugin"]\n')
    result = atrium("serve", "--port", "0", data=data, env=env_for(plugin_path), timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == ("atrium: plugin 'broken_plugin' failed to load: "
                                     "ImportError: cannot import name Thing from nowhere")


def test_enabling_a_plugin_that_is_not_installed_is_a_config_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    atrium("init", str(data))
    (data / "node.toml").write_text('[plugins]\nenabled = ["genration"]\n')
    result = atrium("serve", "--port", "0", data=data, timeout=30)
    assert result.returncode == 2
    assert "plugins.enabled: no plugin named 'genration' is installed" in result.stderr


def test_a_table_for_a_plugin_that_is_not_installed_is_a_config_error(tmp_path: Path) -> None:
    config = make_config(write_node(tmp_path))
    config.plugin_tables = {"genration": {"device": "cpu"}}
    with pytest.raises(ConfigError, match="plugins.genration: no plugin named"):
        PluginHost([]).check_names(config.plugin_tables)


def test_a_plugin_needing_the_ml_extra_says_so_in_one_line() -> None:
    with pytest.raises(PluginLoadError) as err:
        require_modules("generation", ["atrium_surely_missing_module"])
    assert err.value.detail == ("the generation plugin needs the 'ml' extra (atrium_surely_missing_module missing): "
                                "pip install 'atrium-node[ml]' (docs/getting-started.md)")


async def test_async_hooks_are_awaited_and_plugin_routes_are_served(aiohttp_client, tmp_path: Path,
                                                                   plugin_path: Path) -> None:
    config = make_config(write_node(tmp_path), plugins={"enabled": ["hello_plugin"]})
    config.plugin_tables = {"hello_plugin": {"greeting": "bonjour"}}
    host = PluginHost(config.plugins.enabled)
    host.load()
    app = create_app(config, migrate=True, plugins=host)
    client = await aiohttp_client(app)
    response = await client.get("/api/hello_plugin/v1/hello")
    assert (await response.json()) == {"events": [["startup", "bonjour"]]}
    await client.close()
    assert sys.modules["hello_plugin"].events[-1] == ("shutdown",)
    document = await (await aiohttp_client(create_app(config, plugins=host))).get("/.well-known/atrium-node")
    assert (await document.json())["plugins"] == ["hello_plugin"]


async def test_a_plugin_rejects_an_unknown_key_in_its_table(tmp_path: Path, plugin_path: Path) -> None:
    data = tmp_path / "data"
    atrium("init", str(data))
    (data / "node.toml").write_text('[plugins]\nenabled = ["hello_plugin"]\n\n[plugins.hello_plugin]\ngreting = "x"\n')
    result = atrium("serve", "--port", "0", data=data, env=env_for(plugin_path), timeout=30)
    assert result.returncode == 2
    assert "plugins.hello_plugin.greting: unknown key (known: greeting)" in result.stderr


def test_a_plugin_registered_in_a_test_is_unregistered_afterwards(sqlite_config: Config) -> None:
    class Probe:
        @hookspecs.hookimpl
        def atrium_routes(self, routes):
            pass

    host = PluginHost([], available={})
    host.register(Probe(), "probe")
    try:
        assert host.loaded == ["probe"]
    finally:
        host.unregister("probe")
    assert host.loaded == []


def test_entry_points_with_the_same_name_do_not_both_load() -> None:
    first = EntryPoint("dup", "json", hookspecs.ENTRY_POINT_GROUP)
    host = PluginHost(["dup"], available={"dup": first})
    host.load()
    assert host.loaded == ["dup"]


def hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith("atrium_"))


def test_every_hook_is_documented_in_docs_plugins_with_its_signature() -> None:
    text = (DOCS / "plugins.md").read_text()
    import inspect

    for name in hook_names():
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### {name}({params})" in text, f"docs/plugins.md lacks a '### {name}({params})' section"


def test_every_hook_has_a_one_line_docstring() -> None:
    for name in hook_names():
        doc = getattr(hookspecs, name).__doc__ or ""
        assert doc.strip() and "\n" not in doc.strip(), f"{name} needs a one-line docstring"


def test_a_misspelt_hook_name_stops_the_plugin_from_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "site"
    make_distribution(root, "typo_plugin", "from node.core.hookspecs import hookimpl\n\n"
                                           "@hookimpl\ndef atrium_statup(node):\n    pass\n")
    monkeypatch.syspath_prepend(str(root))
    try:
        host = PluginHost(["typo_plugin"])
        with pytest.raises(PluginLoadError, match="plugin 'typo_plugin' failed to load: PluginValidationError"):
            host.load()
        assert host.loaded == []
    finally:
        sys.modules.pop("typo_plugin", None)
