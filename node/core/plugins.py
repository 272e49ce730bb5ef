"""The plugin host: finds plugins by entry point, imports only the enabled ones, and calls hooks.

A disabled plugin is never imported. An enabled plugin that fails to import raises PluginLoadError
with the reason, and the node refuses to start. Hook implementations that are coroutines are awaited.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from node.core import hookspecs
from node.core.errors import AtriumError, ConfigError, PluginLoadError

log = logging.getLogger(__name__)

ML_MODULES = ("torch", "diffusers", "peft", "transformers")


@dataclass
class PluginInfo:
    """What `atrium plugins` shows about one plugin."""

    name: str
    target: str            # the entry point's module path
    distribution: str      # the package that provides it
    enabled: bool
    loaded: bool = False
    error: str | None = None
    summary: str = ""

    @property
    def state(self) -> str:
        if not self.enabled:
            return "available"
        return "enabled" if self.loaded else "failed"


def available_plugins() -> dict[str, EntryPoint]:
    """Installed plugins by name (entry point group `atrium.plugins`); nothing is imported."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            log.warning("two plugins are named %r (%s and %s); using the first", ep.name,
                        found[ep.name].value, ep.value)
            continue
        found[ep.name] = ep
    return found


def require_modules(plugin: str, modules: Iterable[str] = ML_MODULES, extra: str = "ml") -> None:
    """Raise PluginLoadError, in one line, when a module a plugin needs is not installed.

    Built-in plugins that need the machine-learning stack call this when they are imported.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise PluginLoadError(f"the {plugin} plugin needs the '{extra}' extra ({', '.join(missing)} "
                              f"missing): pip install 'atrium-node[{extra}]' (docs/getting-started.md)")


class PluginHost:
    """One pluggy manager holding the enabled plugins."""

    def __init__(self, enabled: Iterable[str], available: dict[str, EntryPoint] | None = None) -> None:
        self.available = available_plugins() if available is None else available
        self.enabled = list(dict.fromkeys(enabled))
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.errors: dict[str, str] = {}

    def check_names(self, tables: Iterable[str] = ()) -> None:
        """ConfigError when `enabled` or a `[plugins.NAME]` table names a plugin that is not installed."""
        for name in self.enabled:
            if name not in self.available:
                raise ConfigError(f"plugins.enabled: no plugin named {name!r} is installed "
                                  f"(installed: {', '.join(sorted(self.available)) or 'none'})")
        for name in tables:
            if name not in self.available:
                raise ConfigError(f"plugins.{name}: no plugin named {name!r} is installed "
                                  f"(installed: {', '.join(sorted(self.available)) or 'none'})")

    def load(self, *, strict: bool = True) -> None:
        """Import and register each enabled plugin.

        With `strict`, the first failure raises PluginLoadError; otherwise failures are collected
        in `self.errors` (for listing).
        """
        for name in self.enabled:
            if self.pm.has_plugin(name) or name in self.errors:
                continue
            try:
                plugin = self.available[name].load()
                self.pm.register(plugin, name=name)
                # A misspelt hook name would otherwise be ignored without a word.
                self.pm.check_pending()
            except Exception as exc:  # any import-time failure is reported, never a traceback
                if self.pm.get_plugin(name) is not None:
                    self.pm.unregister(name=name)
                reason = exc.detail if isinstance(exc, PluginLoadError) else \
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                self.errors[name] = reason
                if strict:
                    raise PluginLoadError(f"plugin {name!r} failed to load: {reason}") from exc

    def register(self, plugin: Any, name: str) -> None:
        """Register a plugin object directly (tests, and code that embeds the node)."""
        self.pm.register(plugin, name=name)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)

    @property
    def loaded(self) -> list[str]:
        """Names of the registered plugins, in load order."""
        return [name for name, _ in self.pm.list_name_plugin()]

    def info(self) -> list[PluginInfo]:
        """Every installed plugin with its state; enabled ones are loaded (not strictly) to find failures."""
        self.load(strict=False)
        rows = []
        for name, ep in sorted(self.available.items()):
            plugin = self.pm.get_plugin(name)
            doc = inspect.getdoc(plugin) if plugin is not None else None
            rows.append(PluginInfo(
                name=name, target=ep.value, distribution=ep.dist.name if ep.dist else "?",
                enabled=name in self.enabled, loaded=plugin is not None, error=self.errors.get(name),
                summary=(doc or "").strip().splitlines()[0] if doc else ""))
        return rows

    async def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call a hook on every plugin and await the implementations that are coroutines."""
        results = []
        for result in getattr(self.pm.hook, hook)(**kwargs):
            if inspect.isawaitable(result):
                result = await result
            results.append(result)
        return results

    def hook_for(self, name: str, hook: str) -> Any:
        """A caller of `hook` that reaches only the plugin `name`."""
        plugin = self.pm.get_plugin(name)
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)

    async def call_each(self, hook: str, names: Iterable[str], **kwargs: Any) -> None:
        """Call a hook plugin by plugin, in the order of `names`, awaiting coroutines.

        A plugin that raises anything but an Atrium error (which already says what is wrong) is
        reported as a PluginLoadError naming the plugin and the hook.
        """
        for name in names:
            if self.pm.get_plugin(name) is None:
                continue
            try:
                for result in self.hook_for(name, hook)(**kwargs):
                    if inspect.isawaitable(result):
                        await result
            except AtriumError:
                raise
            except Exception as exc:
                log.exception("plugin %r failed in %s", name, hook)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise PluginLoadError(f"plugin {name!r} failed in {hook}: {type(exc).__name__}: {first}") from exc
