"""The daemon's TOML configuration: loaded, validated, errors naming the key and the rule.

```toml
[daemon]
hz = 1000                     # jiffies per second
cgroup_hierarchy = "auto"     # auto | v1 | v2 | a mount point
io_threads = 16               # threads doing buffered backing-store I/O (O_DIRECT: AIO)
control_socket = "/run/ioband/control.sock"   # "" : none
state_file = "/var/lib/ioband/state.json"     # "" : nothing persisted
admin_group = "ioband"        # members may change the configuration; root always may
allowed_backing = []          # directories under which admin-group members may create devices
allowed_mounts = []           # directories under which admin-group members may mount
[nbd]
unix_socket = "/run/ioband/nbd.sock"
socket_mode = "0660"          # who may connect: the socket's owner (root) and group
socket_group = "ioband"       # the socket's group (a missing default group: root's)
tcp = "127.0.0.1:10809"       # optional
handshake_timeout = 10        # seconds a client may take to choose an export
max_connections = 1000        # NBD connections in all (root's on the unix socket not counted)
max_connections_per_uid = 100 # per peer user (unix socket) or address (TCP)
tls = "off"                   # off | on (offered) | require (TCP clients must use TLS)
tls_certificates = "/etc/ioband/tls"   # ca-cert.pem, server-cert.pem, server-key.pem
tls_psk_file = "/etc/ioband/keys.psk"  # username:hexkey lines
tls_verify_peer = false       # true: clients need a certificate signed by ca-cert.pem (or a PSK)
[metrics]
listen = "127.0.0.1:9469"     # optional: the Prometheus endpoint (/metrics)
[cluster]                     # optional: devices shared with other hosts' daemons
redis = "redis://:secret@10.0.0.5:6379/0"   # redis://, rediss:// (TLS), unix://; with credentials
name = "array1"               # the cluster's name (the Redis keys' namespace)
interval = 50                 # milliseconds between exchanges (5..5000)
host = "node7"                # this daemon's name in the cluster (default: hostname-pid)
latency_target = 10           # milliseconds: the shared backend's latency the hosts aim at
[[device]]
name = "ioband1"
table = "0 2097152 ioband /var/lib/ioband/disk1.img 1 0 0 cgroup weight 0 :100"
messages = ["attach 1234", "weight 1234:40", "weight machine.slice/vm1.scope:200"]
[[device.rule]]               # a new cgroup attaches itself when it first does I/O (first match)
cgroup = "machine.slice/*.scope"   # a glob over cgroup paths ('*' stays inside one component)
weight = 200                  # or range-bw = "MIN:MAX"; types user/uid and gid: uid = / gid =
direct = false                # O_DIRECT on the backing store
read_only = false
control = true                # false: bypass the scheduler (overhead measurements)
cluster = false               # true: cluster-wide ([cluster]; the same name on every host)
allow = ["group:kvm"]         # who may connect read-write (none given: whoever reaches the socket)
allow_ro = ["uid:1001"]       # who may connect read-only
[[device]]                    # a directory: served as a FUSE mount instead of an NBD export
name = "files1"
table = "0 0 ioband /srv/data 1 0 0 cgroup weight 0 :100"
mountpoint = "/mnt/data"
writeback_cache = false       # true: the kernel delays writes (charged to the file's opener)
write_behind = true           # ioband delays buffered writes, each writer paced by its share
```
``tls`` applies to the TCP listener: with ``on`` or ``require`` the unix socket offers TLS too
but never requires it (its peers are known by SO_PEERCRED). TLS needs credentials: a directory of
X.509 certificates, a PSK file, or both; they are read when the daemon starts.

Tables are checked by the engine when the daemon starts (the same grammar as everywhere).

``control_socket`` and ``state_file`` take the defaults above when the configuration is loaded
with ``service_defaults=True`` (``ioband daemon``); otherwise (tests, embedded daemons) a key
that is not given means none.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioband.access import NOT_FOR_MOUNTS, parse_rules
from ioband.core.grammar import Rule, parse_rule, parse_table

# The configuration's errors live with the others (the front ends raise them too); they are
# this module's as well.
from ioband.errors import ConfigError as ConfigError
from ioband.errors import ConfigErrors as ConfigErrors
from ioband.errors import InvalidArgument, os_errno_name
from ioband.errors import unusable_path as unusable_path

DEFAULT_UNIX_SOCKET = "/run/ioband/nbd.sock"
DEFAULT_CONTROL_SOCKET = "/run/ioband/control.sock"
DEFAULT_STATE_FILE = "/var/lib/ioband/state.json"
DEFAULT_ADMIN_GROUP = "ioband"
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_SOCKET_GROUP = "ioband"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_CONNECTIONS_PER_UID = 100
DEFAULT_CLUSTER_INTERVAL = 0.050
DEFAULT_LATENCY_TARGET = 0.010
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    table: str
    messages: tuple[str, ...] = ()
    direct: bool = False
    read_only: bool = False
    control: bool = True  # False: requests bypass the scheduler (to measure its overhead)
    mountpoint: str | None = None  # a directory device: where its FUSE mount goes
    writeback_cache: bool = False  # FUSE: let the kernel delay and merge writes
    write_behind: bool = True  # FUSE: ioband delays buffered writes (charged, paced by weight)
    allow: tuple[str, ...] = ()  # access rules (ioband/access.py): who may connect read-write
    allow_ro: tuple[str, ...] = ()  # ... and read-only
    rules: tuple[Rule, ...] = ()  # [[device.rule]]: groups that attach themselves
    cluster: bool = False  # cluster-wide: its groups' shares are the cluster's ([cluster])


@dataclass(frozen=True)
class Config:
    hz: int = 1000
    cgroup_hierarchy: str = "auto"
    io_threads: int = 16
    unix_socket: str | None = DEFAULT_UNIX_SOCKET
    tcp: tuple[str, int] | None = None
    devices: tuple[DeviceConfig, ...] = field(default_factory=tuple)
    source: str = "<config>"
    control_socket: str | None = None
    state_file: str | None = None
    admin_group: str | None = DEFAULT_ADMIN_GROUP
    metrics_listen: tuple[str, int] | None = None  # [metrics] listen: the Prometheus endpoint
    allowed_backing: tuple[str, ...] = ()  # where admin-group members may create devices
    allowed_mounts: tuple[str, ...] = ()  # where admin-group members may mount
    socket_mode: int = DEFAULT_SOCKET_MODE
    socket_group: str | None = DEFAULT_SOCKET_GROUP  # None: root's group
    socket_group_required: bool = False  # set in the file: a missing group is an error
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID
    tls: str = "off"  # [nbd] tls: off | on | require (see ioband.nbd.tls)
    tls_certificates: str | None = None  # directory: ca-cert.pem, server-cert.pem, server-key.pem
    tls_psk_file: str | None = None  # username:hexkey lines
    tls_verify_peer: bool = False  # X.509 clients must present a certificate signed by the CA
    cluster: ClusterConfig | None = None  # [cluster]: Redis coordination of cluster-wide devices


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: where the daemons of cluster-wide devices exchange their counters."""

    redis: str
    name: str
    interval: float = DEFAULT_CLUSTER_INTERVAL  # seconds
    host: str | None = None  # None: hostname-pid
    latency_target: float = DEFAULT_LATENCY_TARGET  # seconds


_SECTIONS = {
    "daemon": (
        "hz",
        "cgroup_hierarchy",
        "io_threads",
        "control_socket",
        "state_file",
        "admin_group",
        "allowed_backing",
        "allowed_mounts",
    ),
    "nbd": (
        "unix_socket",
        "tcp",
        "socket_mode",
        "socket_group",
        "handshake_timeout",
        "max_connections",
        "max_connections_per_uid",
        "tls",
        "tls_certificates",
        "tls_psk_file",
        "tls_verify_peer",
    ),
    "metrics": ("listen",),
}
CLUSTER_KEYS = ("redis", "name", "interval", "host", "latency_target")
DEVICE_KEYS = (
    "name",
    "table",
    "messages",
    "direct",
    "read_only",
    "control",
    "mountpoint",
    "writeback_cache",
    "write_behind",
    "allow",
    "allow_ro",
    "rule",
    "cluster",
)


def load_config(
    source: str | Path | Mapping[str, Any], *, service_defaults: bool = False
) -> Config:
    """A path to a TOML file, TOML text, or an already parsed mapping. ``service_defaults``:
    a missing ``control_socket`` or ``state_file`` takes its default path (``ioband daemon``)."""
    if isinstance(source, Mapping):
        return _parse(source, "<config>", service_defaults)
    text_is_path = isinstance(source, Path) or ("\n" not in source and source.endswith(".toml"))
    if text_is_path:
        name = str(source)
        try:
            text = Path(source).read_text()
        except OSError as err:
            rule = f"cannot read: {err.strerror}"
            raise ConfigError(name, "(file)", rule, os_errno_name(err)) from None
    else:
        name, text = "<config>", str(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(name, "(syntax)", f"not valid TOML: {err}") from None
    return _parse(data, name, service_defaults)


def _unknown(src: str, where: str, key: str, allowed: tuple[str, ...]) -> ConfigError:
    near = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(allowed)})"
    return ConfigError(src, f"{where}{key}", f"unknown key{hint}")


def _typed(src: str, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(src, key, f"must be {what}, got {value!r}")
    return value


def _optional_path(src: str, key: str, values: dict, default: str | None) -> str | None:
    value = values.get(key.partition(".")[2], default)
    if value is None:
        return None
    _typed(src, key, value, str, "a path ('' for none)")
    return value or None


def _host_port(src: str, key: str, value: Any) -> tuple[str, int]:
    text = _typed(src, key, value, str, "'HOST:PORT'")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(src, key, f"must be 'HOST:PORT' with a port 0..65535, got {text!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _parse(data: Mapping[str, Any], src: str, service_defaults: bool = False) -> Config:
    """Every entry is checked on its own and every error is reported (ConfigErrors), not only
    the first: an entry in error takes its default so the checks after it still run."""
    errors: list[ConfigError] = []

    def attempt(check: Callable[[], Any], default: Any = None) -> Any:
        try:
            return check()
        except ConfigErrors as err:
            errors.extend(err.errors)
        except ConfigError as err:
            errors.append(err)
        return default

    for key in data:
        if key not in (*_SECTIONS, "cluster", "device"):
            errors.append(_unknown(src, "", key, (*_SECTIONS, "cluster", "device")))
    cluster = attempt(lambda: _cluster(src, data["cluster"])) if "cluster" in data else None
    values: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        table = data.get(section, {})
        if attempt(lambda t=table, s=section: _typed(src, s, t, dict, "a table")) is None:
            continue
        for key, value in table.items():
            if key not in keys:
                errors.append(_unknown(src, f"{section}.", key, keys))
            else:
                values[key] = value
    hz = attempt(lambda: _bounded(src, "daemon.hz", values.get("hz", 1000), 50, 100_000), 1000)
    threads = attempt(lambda: _bounded(src, "daemon.io_threads", values.get("io_threads", 16),
                                       1, 1024), 16)  # fmt: skip
    hierarchy = attempt(lambda: _typed(src, "daemon.cgroup_hierarchy",
                                       values.get("cgroup_hierarchy", "auto"), str, "a string"),
                        "auto")  # fmt: skip
    sock = attempt(lambda: _unix_socket(src, values), None)
    tcp = attempt(lambda: _host_port(src, "nbd.tcp", values["tcp"])) if "tcp" in values else None
    listen = None
    if "listen" in values:
        listen = attempt(lambda: _host_port(src, "metrics.listen", values["listen"]))
    if sock is None and tcp is None and not errors:
        errors.append(ConfigError(src, "nbd", "needs unix_socket or tcp (or both)"))
    raw = attempt(lambda: _typed(src, "device", data.get("device", []), list,
                                 "an array of tables ([[device]])"), [])  # fmt: skip
    devices = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        dev = attempt(lambda i=i, item=item: _device(src, f"device[{i}]", item, names))
        if dev is not None:
            devices.append(dev)
    control_sock = attempt(lambda: _optional_path(src, "daemon.control_socket", values,
                           DEFAULT_CONTROL_SOCKET if service_defaults else None))  # fmt: skip
    state = attempt(lambda: _optional_path(src, "daemon.state_file", values,
                    DEFAULT_STATE_FILE if service_defaults else None))  # fmt: skip
    admin = values.get("admin_group", DEFAULT_ADMIN_GROUP)
    attempt(lambda: _typed(src, "daemon.admin_group", admin, str,
                           "a group name ('' for root only)"))  # fmt: skip
    allowed_backing = attempt(lambda: _directories(src, "daemon.allowed_backing", values), ())
    allowed_mounts = attempt(lambda: _directories(src, "daemon.allowed_mounts", values), ())
    mode = attempt(lambda: _socket_mode(src, values.get("socket_mode", DEFAULT_SOCKET_MODE)),
                   DEFAULT_SOCKET_MODE)  # fmt: skip
    group = values.get("socket_group", DEFAULT_SOCKET_GROUP)
    attempt(lambda: _typed(src, "nbd.socket_group", group, str,
                           "a group name ('' for root's group)"))  # fmt: skip
    timeout = attempt(lambda: _timeout(src, values), DEFAULT_HANDSHAKE_TIMEOUT)
    most = attempt(lambda: _count(src, "nbd.max_connections", values, DEFAULT_MAX_CONNECTIONS),
                   DEFAULT_MAX_CONNECTIONS)  # fmt: skip
    per_uid = attempt(lambda: _count(src, "nbd.max_connections_per_uid", values,
                                     DEFAULT_MAX_CONNECTIONS_PER_UID),
                      DEFAULT_MAX_CONNECTIONS_PER_UID)  # fmt: skip
    if per_uid > most:
        rule = f"must not exceed nbd.max_connections ({most}), got {per_uid}"
        errors.append(ConfigError(src, "nbd.max_connections_per_uid", rule))
    tls_mode, tls_certificates, tls_psk_file, tls_verify_peer = attempt(
        lambda: _tls(src, values), ("off", None, None, False)
    )
    for i, dev in enumerate(devices):
        if dev.cluster and cluster is None and "cluster" not in data:
            rule = "needs a [cluster] section (its redis URL and name)"
            errors.append(ConfigError(src, f"device[{i}].cluster", rule))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
    return Config(hz, hierarchy, threads, sock, tcp, tuple(devices), src, control_sock, state,
                  admin or None, listen, allowed_backing=allowed_backing,
                  allowed_mounts=allowed_mounts, socket_mode=mode, socket_group=group or None,
                  socket_group_required="socket_group" in values,
                  handshake_timeout=float(timeout), max_connections=most,
                  max_connections_per_uid=per_uid, tls=tls_mode,
                  tls_certificates=tls_certificates, tls_psk_file=tls_psk_file,
                  tls_verify_peer=tls_verify_peer, cluster=cluster)  # fmt: skip


def _cluster(src: str, table: Any) -> ClusterConfig:
    """``[cluster]``: every key checked, every error reported."""
    _typed(src, "cluster", table, dict, "a table")
    errors: list[ConfigError] = []
    for key in table:
        if key not in CLUSTER_KEYS:
            errors.append(_unknown(src, "cluster.", key, CLUSTER_KEYS))
    for key in ("redis", "name"):
        if key not in table:
            errors.append(ConfigError(src, f"cluster.{key}", "is required"))

    def check(fn: Callable[[], Any], default: Any = None) -> Any:
        try:
            return fn()
        except ConfigError as err:
            errors.append(err)
        return default

    def url() -> str:
        value = _typed(src, "cluster.redis", table.get("redis", ""), str, "a Redis URL")
        if not value.startswith(REDIS_SCHEMES) or value in REDIS_SCHEMES:
            raise ConfigError(src, "cluster.redis", "must be a URL redis://HOST[:PORT][/DB], "
                              "rediss://... (TLS) or unix:///PATH, got a value that is not "
                              "(not repeated: it may hold a password)")  # fmt: skip
        return value

    def name(key: str, value: Any) -> str:
        _typed(src, f"cluster.{key}", value, str, "a string")
        if not value or len(value) > 64 or not all(c.isalnum() or c in "._-" for c in value):
            raise ConfigError(src, f"cluster.{key}", "must be 1 to 64 letters, digits, '.', '_' "
                              f"or '-', got {value!r}")  # fmt: skip
        return value

    def millis(key: str, default: float, lo: float, hi: float) -> float:
        value = table.get(key, default * 1000)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(src, f"cluster.{key}", f"must be a number of milliseconds, got "
                              f"{value!r}")  # fmt: skip
        if not lo <= value <= hi:
            raise ConfigError(src, f"cluster.{key}", f"must be in {lo:g}..{hi:g} ms, got {value!r}")
        return value / 1000

    redis = check(url, "")
    cluster_name = check(lambda: name("name", table.get("name", "x")), "")
    interval = check(lambda: millis("interval", DEFAULT_CLUSTER_INTERVAL, 5, 5000),
                     DEFAULT_CLUSTER_INTERVAL)  # fmt: skip
    host = check(lambda: name("host", table["host"])) if "host" in table else None
    target = check(lambda: millis("latency_target", DEFAULT_LATENCY_TARGET, 0.1, 10_000),
                   DEFAULT_LATENCY_TARGET)  # fmt: skip
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
    return ClusterConfig(redis, cluster_name, interval, host, target)


def _bounded(src: str, key: str, value: Any, lo: int, hi: int) -> int:
    _typed(src, key, value, int, "an integer")
    if not lo <= value <= hi:
        raise ConfigError(src, key, f"must be in {lo}..{hi}, got {value}")
    return value


def _unix_socket(src: str, values: Mapping[str, Any]) -> str | None:
    sock = values.get("unix_socket", DEFAULT_UNIX_SOCKET)
    if sock is not None:
        _typed(src, "nbd.unix_socket", sock, str, "a path")
    return sock or None


def _timeout(src: str, values: Mapping[str, Any]) -> float:
    timeout = _typed(src, "nbd.handshake_timeout",
                     values.get("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT), (int, float),
                     "a number of seconds")  # fmt: skip
    if isinstance(timeout, bool) or not 0.1 <= timeout <= 3600:
        raise ConfigError(src, "nbd.handshake_timeout", f"must be in 0.1..3600 s, got {timeout!r}")
    return timeout


def _device(src: str, where: str, item: Any, names: set[str]) -> DeviceConfig:
    """One ``[[device]]``: each of its keys checked, every error reported (ConfigErrors)."""
    _typed(src, where, item, dict, "a table")
    errors: list[ConfigError] = []

    def attempt(check: Callable[[], Any], default: Any = None) -> Any:
        try:
            return check()
        except ConfigError as err:
            errors.append(err)
        return default

    for key in item:
        if key not in DEVICE_KEYS:
            errors.append(_unknown(src, f"{where}.", key, DEVICE_KEYS))
    for key in ("name", "table"):
        if key not in item:
            errors.append(ConfigError(src, f"{where}.{key}", "is required"))
    name = attempt(lambda: _typed(src, f"{where}.name", item.get("name", ""), str, "a string"), "")
    if name and name in names:
        errors.append(ConfigError(src, f"{where}.name", f"{name!r} is used twice"))
    names.add(name)
    table = attempt(lambda: _typed(src, f"{where}.table", item.get("table", ""), str,
                                   "a table line"), "")  # fmt: skip

    def messages_of() -> list[str]:
        messages = _typed(src, f"{where}.messages", item.get("messages", []), list, "an array")
        for j, msg in enumerate(messages):
            _typed(src, f"{where}.messages[{j}]", msg, str, "a message string")
        return messages

    messages = attempt(messages_of, [])

    def flag(key: str, default: bool) -> bool:
        return attempt(lambda: _typed(src, f"{where}.{key}", item.get(key, default), bool,
                                      "true or false"), default)  # fmt: skip

    direct, ro, control = flag("direct", False), flag("read_only", False), flag("control", True)
    cluster = flag("cluster", False)

    def mountpoint_of() -> str | None:
        mountpoint = item.get("mountpoint")
        if mountpoint is not None:
            _typed(src, f"{where}.mountpoint", mountpoint, str, "a directory path")
            if not mountpoint.startswith("/"):
                raise ConfigError(src, f"{where}.mountpoint",
                                  f"must be an absolute path, got {mountpoint!r}")  # fmt: skip
        return mountpoint

    mountpoint = attempt(mountpoint_of)
    writeback, behind = flag("writeback_cache", False), flag("write_behind", True)
    allow = attempt(lambda: _rules(src, f"{where}.", item, "allow"), ())
    allow_ro = attempt(lambda: _rules(src, f"{where}.", item, "allow_ro"), ())
    if (allow or allow_ro) and mountpoint is not None:
        errors.append(ConfigError(src, f"{where}.allow", NOT_FOR_MOUNTS))
    rules = attempt(lambda: _device_rules(src, where, item, table), ())
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
    return DeviceConfig(name, table, tuple(messages), direct, ro, control, mountpoint or None,
                        writeback, behind, allow, allow_ro, rules, cluster)  # fmt: skip


def _rules(src: str, where: str, item: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """A device's access rules, checked (names resolved) but kept as written."""
    rules = _typed(src, f"{where}{key}", item.get(key, []), list, "an array of rules")
    try:
        return tuple(rule.text for rule in parse_rules(rules, f"{where}{key}"))
    except InvalidArgument as err:
        key_part, _, rule = str(err).partition(": ")
        raise ConfigError(src, key_part, rule) from None


def _device_rules(src: str, where: str, item: Mapping[str, Any], table: str) -> tuple[Rule, ...]:
    """``[[device.rule]]``: checked against the table's group type and policy values here;
    the engine checks them again against the running device."""
    raw = _typed(src, f"{where}.rule", item.get("rule", []), list, "an array of tables"
                 " ([[device.rule]])")  # fmt: skip
    if not raw:
        return ()
    try:
        gtype = parse_table(table).type
    except InvalidArgument:
        return ()  # the table's own error is reported
    rules = []
    for j, fields in enumerate(raw):
        what = f"{where}.rule[{j}]"
        _typed(src, what, fields, dict, "a table")
        try:
            rules.append(parse_rule(fields, what, gtype))
        except InvalidArgument as err:
            key, _, rule = str(err).partition(": ")
            raise ConfigError(src, key, rule) from None
    return tuple(rules)


def _directories(src: str, key: str, values: Mapping[str, Any]) -> tuple[str, ...]:
    dirs = _typed(src, key, values.get(key.partition(".")[2], []), list, "an array of paths")
    for i, path in enumerate(dirs):
        _typed(src, f"{key}[{i}]", path, str, "a directory path")
        if not path.startswith("/"):
            raise ConfigError(src, f"{key}[{i}]", f"must be an absolute path, got {path!r}")
    return tuple(os.path.normpath(p) for p in dirs)


def _socket_mode(src: str, value: Any) -> int:
    """``"0660"`` (octal digits, as chmod takes them) or an integer such as ``0o660``."""
    if isinstance(value, str) and value and all(c in "01234567" for c in value):
        value = int(value, 8)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ConfigError(src, "nbd.socket_mode", f"must be octal permission bits such as"
                          f" \"0660\", got {value!r}")  # fmt: skip
    return value


def _count(src: str, key: str, values: Mapping[str, Any], default: int) -> int:
    value = _typed(src, key, values.get(key.partition(".")[2], default), int, "an integer")
    if not 1 <= value <= 1_000_000:
        raise ConfigError(src, key, f"must be in 1..1000000, got {value}")
    return value


TLS_MODES = ("off", "on", "require")


def _tls(src: str, values: dict[str, Any]) -> tuple[str, str | None, str | None, bool]:
    """[nbd] tls, tls_certificates, tls_psk_file, tls_verify_peer; the files are read later,
    when the daemon starts (ioband.nbd.tls.load_credentials)."""
    mode = _typed(src, "nbd.tls", values.get("tls", "off"), str, "'off', 'on' or 'require'")
    if mode not in TLS_MODES:
        raise ConfigError(src, "nbd.tls", f"must be 'off', 'on' or 'require', got {mode!r}")
    certs = _optional_path(src, "nbd.tls_certificates", values, None)
    psk = _optional_path(src, "nbd.tls_psk_file", values, None)
    verify = _typed(src, "nbd.tls_verify_peer", values.get("tls_verify_peer", False), bool,
                    "true or false")  # fmt: skip
    if mode != "off" and not certs and not psk:
        raise ConfigError(src, "nbd.tls", f"{mode!r} needs credentials: tls_certificates (a"
                          " directory of X.509 PEM files) or tls_psk_file (or both)")  # fmt: skip
    if verify and not certs:
        raise ConfigError(src, "nbd.tls_verify_peer", "needs tls_certificates (its ca-cert.pem"
                          " signs the client certificates)")  # fmt: skip
    return mode, certs, psk, verify
