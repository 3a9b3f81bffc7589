"""The daemon's TOML configuration: loaded, validated, errors naming the key and the rule.

```toml
[daemon]
hz = 1000                     # jiffies per second
cgroup_hierarchy = "auto"     # auto | v1 | v2 | a mount point
io_threads = 16               # worker threads doing backing-store I/O
control_socket = "/run/ioband/control.sock"   # "" : none
state_file = "/var/lib/ioband/state.json"     # "" : nothing persisted
admin_group = "ioband"        # members may change the configuration; root always may
[nbd]
unix_socket = "/run/ioband/nbd.sock"
tcp = "127.0.0.1:10809"       # optional
tls = "off"                   # off | on (offered) | require (TCP clients must use TLS)
tls_certificates = "/etc/ioband/tls"   # ca-cert.pem, server-cert.pem, server-key.pem
tls_psk_file = "/etc/ioband/keys.psk"  # username:hexkey lines
tls_verify_peer = false       # true: clients need a certificate signed by ca-cert.pem (or a PSK)
[metrics]
listen = "127.0.0.1:9469"     # optional: the Prometheus endpoint (/metrics)
[[device]]
name = "ioband1"
table = "0 2097152 ioband /var/lib/ioband/disk1.img 1 0 0 cgroup weight 0 :100"
messages = ["attach 1234", "weight 1234:40"]
direct = false                # O_DIRECT on the backing store
read_only = false
control = true                # false: bypass the scheduler (overhead measurements)
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
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioband.errors import InvalidArgument

DEFAULT_UNIX_SOCKET = "/run/ioband/nbd.sock"
DEFAULT_CONTROL_SOCKET = "/run/ioband/control.sock"
DEFAULT_STATE_FILE = "/var/lib/ioband/state.json"
DEFAULT_ADMIN_GROUP = "ioband"


class ConfigError(InvalidArgument):
    """A configuration file was refused; ``key`` names the offending entry."""

    def __init__(self, source: str, key: str, rule: str) -> None:
        super().__init__(f"{source}: {key}: {rule}")
        self.source = source
        self.key = key
        self.rule = rule


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
    tls: str = "off"  # [nbd] tls: off | on | require (see ioband.nbd.tls)
    tls_certificates: str | None = None  # directory: ca-cert.pem, server-cert.pem, server-key.pem
    tls_psk_file: str | None = None  # username:hexkey lines
    tls_verify_peer: bool = False  # X.509 clients must present a certificate signed by the CA


_SECTIONS = {
    "daemon": (
        "hz",
        "cgroup_hierarchy",
        "io_threads",
        "control_socket",
        "state_file",
        "admin_group",
    ),
    "nbd": ("unix_socket", "tcp", "tls", "tls_certificates", "tls_psk_file", "tls_verify_peer"),
    "metrics": ("listen",),
}
_DEVICE_KEYS = ("name", "table", "messages", "direct", "read_only", "control", "mountpoint",
                "writeback_cache", "write_behind")


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
            raise ConfigError(name, "(file)", f"cannot read: {err.strerror}") from None
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
    for key in data:
        if key not in (*_SECTIONS, "device"):
            raise _unknown(src, "", key, (*_SECTIONS, "device"))
    values: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        table = data.get(section, {})
        _typed(src, section, table, dict, "a table")
        for key, value in table.items():
            if key not in keys:
                raise _unknown(src, f"{section}.", key, keys)
            values[key] = value
    hz = _typed(src, "daemon.hz", values.get("hz", 1000), int, "an integer")
    if not 50 <= hz <= 100_000:
        raise ConfigError(src, "daemon.hz", f"must be in 50..100000, got {hz}")
    threads = _typed(src, "daemon.io_threads", values.get("io_threads", 16), int, "an integer")
    if not 1 <= threads <= 1024:
        raise ConfigError(src, "daemon.io_threads", f"must be in 1..1024, got {threads}")
    hierarchy = _typed(src, "daemon.cgroup_hierarchy", values.get("cgroup_hierarchy", "auto"),
                       str, "a string")  # fmt: skip
    sock = values.get("unix_socket", DEFAULT_UNIX_SOCKET)
    if sock is not None:
        _typed(src, "nbd.unix_socket", sock, str, "a path")
        if not sock:
            sock = None
    tcp = _host_port(src, "nbd.tcp", values["tcp"]) if "tcp" in values else None
    listen = _host_port(src, "metrics.listen", values["listen"]) if "listen" in values else None
    if sock is None and tcp is None:
        raise ConfigError(src, "nbd", "needs unix_socket or tcp (or both)")
    raw = data.get("device", [])
    _typed(src, "device", raw, list, "an array of tables ([[device]])")
    devices = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"device[{i}]"
        _typed(src, where, item, dict, "a table")
        for key in item:
            if key not in _DEVICE_KEYS:
                raise _unknown(src, f"{where}.", key, _DEVICE_KEYS)
        for key in ("name", "table"):
            if key not in item:
                raise ConfigError(src, f"{where}.{key}", "is required")
        name = _typed(src, f"{where}.name", item["name"], str, "a string")
        if name in names:
            raise ConfigError(src, f"{where}.name", f"{name!r} is used twice")
        names.add(name)
        table = _typed(src, f"{where}.table", item["table"], str, "a table line")
        messages = _typed(src, f"{where}.messages", item.get("messages", []), list, "an array")
        for j, msg in enumerate(messages):
            _typed(src, f"{where}.messages[{j}]", msg, str, "a message string")
        direct = _typed(src, f"{where}.direct", item.get("direct", False), bool, "true or false")
        ro = _typed(src, f"{where}.read_only", item.get("read_only", False), bool, "true or false")
        control = _typed(src, f"{where}.control", item.get("control", True), bool, "true or false")
        mountpoint = item.get("mountpoint")
        if mountpoint is not None:
            _typed(src, f"{where}.mountpoint", mountpoint, str, "a directory path")
            if not mountpoint.startswith("/"):
                raise ConfigError(src, f"{where}.mountpoint",
                                  f"must be an absolute path, got {mountpoint!r}")  # fmt: skip
        writeback = _typed(src, f"{where}.writeback_cache", item.get("writeback_cache", False),
                           bool, "true or false")  # fmt: skip
        behind = _typed(src, f"{where}.write_behind", item.get("write_behind", True), bool,
                        "true or false")  # fmt: skip
        devices.append(DeviceConfig(name, table, tuple(messages), direct, ro, control,
                                    mountpoint or None, writeback, behind))  # fmt: skip
    control_sock = _optional_path(src, "daemon.control_socket", values,
                             DEFAULT_CONTROL_SOCKET if service_defaults else None)  # fmt: skip
    state = _optional_path(src, "daemon.state_file", values,
                           DEFAULT_STATE_FILE if service_defaults else None)  # fmt: skip
    admin = values.get("admin_group", DEFAULT_ADMIN_GROUP)
    _typed(src, "daemon.admin_group", admin, str, "a group name ('' for root only)")
    tls = _tls(src, values)
    return Config(hz, hierarchy, threads, sock, tcp, tuple(devices), src, control_sock, state,
                  admin or None, listen, *tls)  # fmt: skip


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
