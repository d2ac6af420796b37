# -*- test-case-name: tests.test_config -*-
"""
The ini file turned into a validated, typed L{Config}.

Every problem is reported as one L{ConfigError} naming the file, the section and the key,
so that a node refuses to start with a single clear line instead of failing later.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field
from typing import Callable


class ConfigError(Exception):
    """
    The configuration cannot be used; C{str()} is one line naming file, section and key.
    """

    def __init__(self, path: str, section: str | None, key: str | None, message: str):
        self.path = path
        self.section = section
        self.key = key
        self.message = message
        where = path
        if section is not None:
            where += f" [{section}]"
        if key is not None:
            where += f" {key}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class NodeConfig:
    id: str
    listen: str
    advertise_url: str


@dataclass(frozen=True)
class ChatConfig:
    groups: int
    max_text_chars: int
    typing_ttl: float
    max_poll_timeout: float
    history_in_memory: int
    idle_evict: float
    #: Seconds a user stays online after their last long-poll ended.
    presence_grace: float = 30.0
    #: Longest silence (seconds) of an open event stream before a heartbeat comment.
    stream_heartbeat: float = 15.0


@dataclass(frozen=True)
class StorageConfig:
    """
    @ivar path: the SQLite file (backend C{sqlite}); None for C{foundationdb}.
    @ivar cluster_file: the FoundationDB cluster file (backend C{foundationdb}), else None.
    @ivar key_prefix: the first element of every FoundationDB key (tuple layer).
    @ivar dsn: the libpq connection string (backend C{postgresql}), read from C{dsn} or from
        the file C{dsn_file} (to keep a password out of the ini), else None.
    """

    backend: str
    path: str | None
    batch_size: int
    flush_interval: float
    max_pending: int
    #: The interval between batches while the node is nearly idle (L{hpchat.pacing}).
    min_flush_interval: float = 0.001
    cluster_file: str | None = None
    key_prefix: str = "hpchat"
    dsn: str | None = None


@dataclass(frozen=True)
class AuthConfig:
    secret: bytes
    dev_login: bool


@dataclass(frozen=True)
class ClusterConfig:
    etcd: str
    prefix: str
    lease_ttl: int
    fence_margin: float
    rebalance_slack: int


@dataclass(frozen=True)
class NSQConfig:
    nsqd_tcp: tuple[str, ...]
    topic: str
    channel: str
    max_in_flight: int


@dataclass(frozen=True)
class HTTPConfig:
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitsConfig:
    """
    The limits of DESIGN §9 (the C{[limits]} section), each counted in metrics.

    Per connection: C{max_head_bytes} and C{max_headers} (431), C{max_target_bytes} (414),
    C{max_body_bytes} (413 from Content-Length before reading; C{max_internal_body_bytes} on
    C{/internal/} routes between nodes), C{head_timeout} (a whole request head),
    C{body_timeout} (a whole body), C{idle_timeout} (a kept-alive connection between requests;
    suspended while a long-poll waits). Per node: C{max_connections} (503 C{overloaded} past
    it), C{max_streams} (streams in memory, least recently used evicted). Per user: token
    buckets for sends and typing (429 C{rate_limited}), C{max_polls_per_user} waiting at once.
    """

    max_head_bytes: int = 16384
    max_headers: int = 100
    max_target_bytes: int = 8192
    max_body_bytes: int = 65536
    max_internal_body_bytes: int = 4 * 1024 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 18000
    max_streams: int = 100000
    sends_per_second: float = 10.0
    sends_burst: int = 20
    typing_per_second: float = 5.0
    typing_burst: int = 10
    max_polls_per_user: int = 8


@dataclass(frozen=True)
class Config:
    path: str
    node: NodeConfig
    chat: ChatConfig
    storage: StorageConfig
    auth: AuthConfig
    cluster: ClusterConfig | None = None
    nsq: NSQConfig | None = None
    http: HTTPConfig = HTTPConfig()
    limits: LimitsConfig = LimitsConfig()
    extra: dict = field(default_factory=dict)


_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
_STORAGE_BACKENDS = ("sqlite", "postgresql", "foundationdb")
FDB_MAX_TEXT_CHARS = 16000
_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
_NSQ_NAME = re.compile(r"[.a-zA-Z0-9_-]{1,64}(#ephemeral)?", re.ASCII)


class _Section:
    """
    Typed accessors over one ini section that raise L{ConfigError} naming the key.
    """

    def __init__(self, path: str, name: str, values: dict[str, str]):
        self.path = path
        self.name = name
        self._values = values
        self._used: set[str] = set()

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, self.name, key, message)

    def raw(self, key: str, default: str | None) -> str:
        self._used.add(key)
        value = self._values.get(key)
        if value is None or value.strip() == "":
            if default is None:
                raise self.error(key, "is required")
            return default
        return value.strip()

    def text(self, key: str, default: str | None = None,
             check: Callable[[str], object] | None = None, expected: str = "") -> str:
        value = self.raw(key, default)
        if check is not None and not check(value):
            raise self.error(key, f"must be {expected} (got {value!r})")
        return value

    def integer(self, key: str, default: int | None, low: int, high: int) -> int:
        value = self.raw(key, None if default is None else str(default))
        try:
            number = int(value)
        except ValueError:
            raise self.error(key, f"must be an integer (got {value!r})") from None
        if not low <= number <= high:
            raise self.error(key, f"must be between {low} and {high} (got {number})")
        return number

    def number(self, key: str, default: float | None, low: float, high: float) -> float:
        value = self.raw(key, None if default is None else str(default))
        try:
            number = float(value)
        except ValueError:
            raise self.error(key, f"must be a number (got {value!r})") from None
        if not low <= number <= high:
            raise self.error(key, f"must be between {low:g} and {high:g} (got {number:g})")
        return number

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, "true" if default else "false").lower()
        if value in ("1", "yes", "true", "on"):
            return True
        if value in ("0", "no", "false", "off"):
            return False
        raise self.error(key, f"must be true or false (got {value!r})")

    def checkNoUnknownKeys(self) -> None:
        unknown = sorted(set(self._values) - self._used)
        if unknown:
            raise self.error(unknown[0], "is not a known option (typo?)")


def _listenProblem(value: str) -> str | None:
    """
    What is wrong with the server endpoint string C{value}, or None: it is parsed, and
    listened on, against a memory reactor, so that nothing is opened. C{systemd:} endpoints
    are left to startup: they need the sockets that systemd passes.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory
    from twisted.internet.testing import MemoryReactor

    if value.split(":", 1)[0] == "systemd":
        return None
    reactor = MemoryReactor()
    try:
        serverFromString(reactor, value).listen(Factory())
    except TypeError as e:
        # An unknown endpoint argument: "...() got an unexpected keyword argument 'x'".
        name = str(e).rpartition(" ")[2]
        return f"is not a valid endpoint ({value!r}): unknown argument {name}"
    except Exception as e:
        return f"is not a valid endpoint ({value!r}): {e}"
    for port, *_ in reactor.tcpServers:
        if not 0 <= port <= 65535:
            return f"is not a valid endpoint ({value!r}): port {port} is not in 0-65535"
    return None


def _isURL(value: str) -> bool:
    return re.fullmatch(r"https?://[^/\s]+(/.*)?", value, re.ASCII) is not None


def _readSecret(section: _Section, baseDir: str) -> bytes:
    secret = section.raw("secret", "")
    secretFile = section.raw("secret_file", "")
    if secret and secretFile:
        raise section.error("secret_file", "give either secret or secret_file, not both")
    if secretFile:
        fullPath = os.path.join(baseDir, secretFile)
        try:
            with open(fullPath, "rb") as f:
                secretBytes = f.read().strip()
        except OSError as e:
            raise section.error("secret_file",
                                f"cannot be read: {e.strerror} ({fullPath})") from None
    elif secret:
        secretBytes = secret.encode("utf-8")
    else:
        raise section.error("secret", "is required (or secret_file)")
    if len(secretBytes) < 32:
        # RFC 7518 3.2: an HS256 key at least as long as the hash output (32 bytes).
        raise section.error("secret_file" if secretFile else "secret",
                            "must be at least 32 bytes long")
    return secretBytes


def _readDsn(section: _Section, baseDir: str) -> str:
    dsn = section.raw("dsn", "")
    dsnFile = section.raw("dsn_file", "")
    if dsn and dsnFile:
        raise section.error("dsn_file", "give either dsn or dsn_file, not both")
    key = "dsn"
    if dsnFile:
        key = "dsn_file"
        fullPath = os.path.join(baseDir, dsnFile)
        try:
            with open(fullPath, encoding="utf-8") as f:
                dsn = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or "not UTF-8 text"
            raise section.error("dsn_file", f"cannot be read: {reason} ({fullPath})") from None
    if not dsn:
        raise section.error("dsn", "is required with backend = postgresql (or dsn_file), "
                                   "e.g. host=db.internal dbname=hpchat user=hpchat")
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return dsn
    try:
        conninfo_to_dict(dsn)
    except Exception as e:
        # The message of a bad DSN names no secret: it says which part could not be read.
        raise section.error(key, f"is not a valid libpq connection string: "
                                 f"{str(e).splitlines()[0] if str(e) else 'invalid'}") from None
    return dsn


def sqlitePath(configured: str, baseDir: str, environ: dict | None = None) -> str:
    """
    The SQLite file: a C{configured} relative path is relative to the ini file's folder
    C{baseDir}. Without one, C{$STATE_DIRECTORY/hpchat.sqlite3} when systemd's
    C{StateDirectory=} sets C{$STATE_DIRECTORY} (its first folder), else
    C{var/hpchat.sqlite3} in the working directory the node is started from.
    """
    if configured:
        return os.path.join(baseDir, configured)
    stateDirectory = (os.environ if environ is None else environ).get("STATE_DIRECTORY", "")
    stateDirectory = stateDirectory.split(":")[0]
    if stateDirectory:
        return os.path.join(stateDirectory, "hpchat.sqlite3")
    return os.path.abspath(os.path.join("var", "hpchat.sqlite3"))


_KNOWN_SECTIONS = {"node", "chat", "storage", "auth", "cluster", "nsq", "http", "limits"}


def parseConfig(text: str, path: str = "<config>") -> Config:
    """
    Parse and validate the ini C{text}; relative paths are taken relative to C{path}'s folder.
    """
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00unused")
    try:
        parser.read_string(text, source=path)
    except configparser.Error as e:
        line = getattr(e, "lineno", None)
        message = e.message.splitlines()[0] if hasattr(e, "message") else str(e)
        where = f" (line {line})" if line else ""
        raise ConfigError(path, None, None,
                          f"not a valid ini file{where}: {message}") from None
    baseDir = os.path.dirname(os.path.abspath(path)) if path != "<config>" else os.getcwd()
    for name in parser.sections():
        if name not in _KNOWN_SECTIONS:
            raise ConfigError(path, name, None, "is not a known section")

    def section(name: str) -> _Section:
        values = dict(parser.items(name)) if parser.has_section(name) else {}
        return _Section(path, name, values)

    s = section("node")
    listen = s.text("listen", "tcp:8080:interface=127.0.0.1")
    problem = _listenProblem(listen)
    if problem is not None:
        raise s.error("listen", problem)
    node = NodeConfig(
        id=s.text("id", None, _NODE_ID.fullmatch, "1-64 characters of A-Z a-z 0-9 _ . -"),
        listen=listen,
        advertise_url=s.text("advertise_url", None, _isURL, "an http(s) URL").rstrip("/"),
    )
    s.checkNoUnknownKeys()

    s = section("chat")
    chat = ChatConfig(
        groups=s.integer("groups", 64, 1, 4096),
        max_text_chars=s.integer("max_text_chars", 4000, 1, 60000),
        typing_ttl=s.number("typing_ttl", 6, 0.1, 600),
        max_poll_timeout=s.number("max_poll_timeout", 60, 0, 3600),
        history_in_memory=s.integer("history_in_memory", 200, 1, 100000),
        idle_evict=s.number("idle_evict", 300, 1, 86400),
        presence_grace=s.number("presence_grace", 30, 0, 3600),
        stream_heartbeat=s.number("stream_heartbeat", 15, 0.5, 3600),
    )
    s.checkNoUnknownKeys()

    s = section("storage")
    backend = s.text("backend", "sqlite", lambda v: v in _STORAGE_BACKENDS,
                     " or ".join(_STORAGE_BACKENDS))
    storagePath = clusterFile = dsn = None
    keyPrefix = "hpchat"
    if backend != "postgresql":
        for key in ("dsn", "dsn_file"):
            if s.raw(key, ""):
                raise s.error(key, "is only for backend = postgresql")
    if backend == "sqlite":
        storagePath = sqlitePath(s.raw("path", ""), baseDir)
        for key in ("cluster_file", "key_prefix"):
            if s.raw(key, ""):
                raise s.error(key, "is only for backend = foundationdb")
    elif backend == "postgresql":
        for key in ("path", "cluster_file", "key_prefix"):
            if s.raw(key, ""):
                raise s.error(key, "is not an option of backend = postgresql (use dsn)")
        dsn = _readDsn(s, baseDir)
    else:
        if s.raw("path", ""):
            raise s.error("path", "is only for backend = sqlite (use cluster_file)")
        clusterFile = s.raw("cluster_file", "")
        if not clusterFile:
            raise s.error("cluster_file", "is required with backend = foundationdb "
                                          "(e.g. /etc/foundationdb/fdb.cluster)")
        clusterFile = os.path.join(baseDir, clusterFile)
        keyPrefix = s.text("key_prefix", "hpchat", _KEY_PREFIX.fullmatch,
                           "1-64 characters of A-Z a-z 0-9 _ . -")
        if chat.max_text_chars > FDB_MAX_TEXT_CHARS:
            # One event is one FoundationDB value (at most 100,000 bytes); JSON may spend up
            # to 6 bytes on a character.
            raise ConfigError(path, "chat", "max_text_chars",
                              f"must be at most {FDB_MAX_TEXT_CHARS} with [storage] backend = "
                              f"foundationdb (got {chat.max_text_chars})")
    flushInterval = s.number("flush_interval", 0.005, 0.0005, 10)
    minFlushInterval = s.number("min_flush_interval", min(0.001, flushInterval), 0.0005, 10)
    if minFlushInterval > flushInterval:
        raise ConfigError(path, "storage", "min_flush_interval",
                          f"must be at most flush_interval ({flushInterval:g}) "
                          f"(got {minFlushInterval:g})")
    storage = StorageConfig(
        backend=backend,
        path=storagePath,
        # SQLite's cost is per transaction (its commit), so it takes bigger batches;
        # FoundationDB keeps a default batch within one transaction's limits.
        batch_size=s.integer("batch_size", 100 if backend == "foundationdb" else 1000, 1, 10000),
        flush_interval=flushInterval,
        min_flush_interval=minFlushInterval,
        max_pending=s.integer("max_pending", 10000, 1, 10_000_000),
        cluster_file=clusterFile,
        key_prefix=keyPrefix,
        dsn=dsn,
    )
    s.checkNoUnknownKeys()

    s = section("auth")
    auth = AuthConfig(secret=_readSecret(s, baseDir), dev_login=s.boolean("dev_login", False))
    s.checkNoUnknownKeys()

    cluster = None
    if parser.has_section("cluster"):
        s = section("cluster")
        cluster = ClusterConfig(
            etcd=s.text("etcd", None, _isURL, "an http(s) URL of etcd's client port").rstrip("/"),
            prefix=s.text("prefix", "/hpchat/", lambda v: v.startswith("/") and v.endswith("/"),
                          "a key prefix starting and ending with /"),
            lease_ttl=s.integer("lease_ttl", 5, 2, 600),
            fence_margin=s.number("fence_margin", 1.0, 0, 60),
            rebalance_slack=s.integer("rebalance_slack", 1, 0, 4096),
        )
        if cluster.fence_margin >= cluster.lease_ttl:
            raise s.error("fence_margin", "must be smaller than lease_ttl")
        s.checkNoUnknownKeys()

    nsq = None
    if parser.has_section("nsq"):
        s = section("nsq")
        addresses = tuple(a.strip() for a in s.text("nsqd_tcp", None).split(",") if a.strip())
        for address in addresses:
            if not re.fullmatch(r"[^:\s]+:\d{1,5}", address, re.ASCII):
                raise s.error("nsqd_tcp", f"must be host:port[, host:port...] (got {address!r})")
        nsq = NSQConfig(
            nsqd_tcp=addresses,
            topic=s.text("topic", "hpchat.notifications", _NSQ_NAME.fullmatch,
                         "a valid NSQ topic name"),
            channel=s.text("channel", "hpchat", _NSQ_NAME.fullmatch, "a valid NSQ channel name"),
            max_in_flight=s.integer("max_in_flight", 200, 1, 100000),
        )
        s.checkNoUnknownKeys()

    s = section("http")
    origins = tuple(o.strip().rstrip("/") for o in s.raw("cors_origins", "").split(",")
                    if o.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin, re.ASCII):
            raise s.error("cors_origins", f"must be * or origins like https://example.com "
                                          f"(got {origin!r})")
    http = HTTPConfig(cors_origins=origins)
    s.checkNoUnknownKeys()

    s = section("limits")
    d = LimitsConfig()
    limits = LimitsConfig(
        max_head_bytes=s.integer("max_head_bytes", d.max_head_bytes, 1024, 1 << 20),
        max_headers=s.integer("max_headers", d.max_headers, 8, 1000),
        max_target_bytes=s.integer("max_target_bytes", d.max_target_bytes, 256, 1 << 20),
        max_body_bytes=s.integer("max_body_bytes", d.max_body_bytes, 1024, 64 << 20),
        max_internal_body_bytes=s.integer("max_internal_body_bytes",
                                          d.max_internal_body_bytes, 1024, 256 << 20),
        head_timeout=s.number("head_timeout", d.head_timeout, 0.1, 3600),
        body_timeout=s.number("body_timeout", d.body_timeout, 0.1, 3600),
        idle_timeout=s.number("idle_timeout", d.idle_timeout, 0.1, 86400),
        max_connections=s.integer("max_connections", d.max_connections, 1, 10_000_000),
        max_streams=s.integer("max_streams", d.max_streams, 16, 100_000_000),
        sends_per_second=s.number("sends_per_second", d.sends_per_second, 0.01, 1e6),
        sends_burst=s.integer("sends_burst", d.sends_burst, 1, 1_000_000),
        typing_per_second=s.number("typing_per_second", d.typing_per_second, 0.01, 1e6),
        typing_burst=s.integer("typing_burst", d.typing_burst, 1, 1_000_000),
        max_polls_per_user=s.integer("max_polls_per_user", d.max_polls_per_user, 1, 100_000),
    )
    s.checkNoUnknownKeys()

    return Config(path=path, node=node, chat=chat, storage=storage, auth=auth,
                  cluster=cluster, nsq=nsq, http=http, limits=limits)


def loadConfig(path: str) -> Config:
    """
    Read and validate the config file at C{path}.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read config file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, None, "config file is not UTF-8 text") from None
    return parseConfig(text, path)
