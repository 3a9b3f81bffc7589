"""dmsetup-compatible commands: ``ioband create|remove|message|table|status|ls|suspend|resume|
targets``, and ``ioband reload``, each one request to the daemon's control socket.

Output lines are dmsetup's, ``NAME: <start> <len> ioband ...``; ``--json`` prints one JSON
document for scripts, on every command: a read's answer, structured (README, "JSON output"), a
change's ``{"ok": true, "command": ..., ...}``, and a refusal's ``{"ok": false, "command": ...,
"error": {"errno": ..., "message": ...}}`` (the message also goes to stderr). A refused request
exits with the status of its errno (``ioband.errors.EXIT_STATUS``); an unreachable daemon exits
1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from ioband.cgroup.blkio import FILES as CGROUP_FILES
from ioband.control.client import SOCKET_ENV, Unreachable, call, socket_path
from ioband.core.grammar import TARGET
from ioband.errors import EXIT_STATUS, IobandError

PROG = "ioband"
EXIT_UNREACHABLE = 1


def _common(p: argparse.ArgumentParser, *, reads: bool) -> None:
    p.add_argument("--socket", metavar="PATH",
                   help=f"the daemon's control socket (default ${SOCKET_ENV}, else "
                   "/run/ioband/control.sock)")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help="print JSON (for scripts)" if reads else
                   'print {"ok": true, ...} or the error as JSON (for scripts)')  # fmt: skip


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2))


def _run(command: str, args: argparse.Namespace, op: str, show: Callable[[Any], None] | None,
         *, shape: Callable[[Any], Any] | None = None, **fields: Any) -> int:  # fmt: skip
    """One request. ``show``: how a read prints its answer (None: a change, silent as dmsetup);
    ``shape``: how ``--json`` structures the answer (default: as the daemon sent it, or for a
    change ``{"ok": true, "command": ..., <the request's fields>}``)."""
    as_json = getattr(args, "json", False)
    try:
        result = call(socket_path(args.socket), op, **fields)
    except (Unreachable, IobandError) as err:
        unreachable = isinstance(err, Unreachable)
        text = str(err) if unreachable else err.describe()
        print(f"{PROG} {command}: {text}", file=sys.stderr)
        errno_name = "EHOSTUNREACH" if unreachable else err.errno_name
        if as_json:
            _print_json({"ok": False, "command": command,
                         "error": {"errno": errno_name, "message": text}})  # fmt: skip
        return EXIT_UNREACHABLE if unreachable else EXIT_STATUS.get(errno_name, 1)
    if as_json:
        if shape is not None:
            _print_json(shape(result))
        elif show is None:
            sent = {k: v for k, v in fields.items() if v is not None}
            _print_json({"ok": True, "command": command, **sent})
        else:
            _print_json(result)
    elif show is not None:
        show(result)
    return 0


def _lines(key: str, target: str | None) -> Callable[[list[dict[str, str]]], None]:
    def show(result: list[dict[str, str]]) -> None:
        if target is not None and target != TARGET:
            return  # no device has that target
        if not result:
            print("No devices found")
        for item in result:
            print(f"{item['name']}: {item[key]}")

    return show


def _usage(command: str, message: str) -> int:
    print(f"{PROG} {command}: {message} (EINVAL)", file=sys.stderr)
    return EXIT_STATUS["EINVAL"]


# -- the commands --------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    table = args.table
    if table is None:
        if sys.stdin.isatty():
            print("Reading the table from stdin (end with Ctrl-D)", file=sys.stderr)
        lines = [ln.strip() for ln in sys.stdin.read().splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if len(lines) != 1:
            return _usage("create", f"expected one table line, got {len(lines)}")
        table = lines[0]
    return _run("create", args, "create", None, name=args.name, table=table,
                direct=args.direct or None, read_only=args.read_only or None,
                mount=os.path.abspath(args.mount) if args.mount else None,
                writeback_cache=args.writeback_cache or None,
                write_behind=False if args.no_write_behind else None,
                allow=args.allow or None, allow_ro=args.allow_ro or None)  # fmt: skip


def cmd_message(args: argparse.Namespace) -> int:
    text = (
        args.sector if isinstance(args.sector, str) else " ".join(args.sector)
    )  # argparse: "-- --"
    try:
        sector = int(text, 0)
    except ValueError:
        sector = -1
    if sector != 0:
        return _usage("message", f"Invalid sector {text!r}: ioband takes messages at 0")
    return _run("message", args, "message", None, name=args.name, words=args.words)


def cmd_simple(op: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return _run(op, args, op, None, name=args.name)

    return run


def cmd_table(args: argparse.Namespace) -> int:
    return _run("table", args, "table", _lines("table", args.target), name=args.name)


def cmd_status(args: argparse.Namespace) -> int:
    return _run("status", args, "status", _lines("status", args.target), name=args.name,
                format=args.format)  # fmt: skip


def cmd_ls(args: argparse.Namespace) -> int:
    def show(result: list[dict[str, Any]]) -> None:
        if not result:
            print("No devices found")
        for item in result:
            mount = item.get("mount")
            where = f"fuse mount {mount}" if mount else f"nbd export {item['name']}"
            print(f"{item['name']}\t({where})")

    return _run("ls", args, "ls", show)


def cmd_targets(args: argparse.Namespace) -> int:
    def show(result: list[dict[str, str]]) -> None:
        for item in result:
            print(f"{item['name']:<16} v{item['version']}")

    return _run("targets", args, "targets", show)


def cmd_info(args: argparse.Namespace) -> int:
    def show(result: dict[str, Any]) -> None:
        for key, value in result.items():
            print(f"{key}: {value}")

    return _run("info", args, "info", show)


def cmd_reload(args: argparse.Namespace) -> int:
    def show(result: dict[str, Any]) -> None:
        for line in result["summary"]:
            print(line)

    return _run("reload", args, "reload", show)


def cmd_cgroup(args: argparse.Namespace) -> int:
    value = " ".join(args.value) if args.value else None

    def show(result: str) -> None:
        print(result, end="")

    def shape(result: str) -> dict[str, Any]:
        if value is not None:
            return {"ok": True, "command": "cgroup", "file": args.file, "cgroup": args.cgroup,
                    "value": value}  # fmt: skip
        return {"file": args.file, "cgroup": args.cgroup, "text": result,
                "entries": cgroup_entries(result)}  # fmt: skip

    return _run(f"cgroup {args.file}", args, "cgroup", show, shape=shape, file=args.file,
                cgroup=args.cgroup, value=value)  # fmt: skip


def cgroup_entries(text: str) -> list[dict[str, Any]]:
    """A cgroup file's lines as data: the first word names the entry (a device, a device group,
    or the cgroup id), then ``key=value`` words as fields and the other words as ``values``
    (numbers as numbers); an indented line is a member of the entry above (``members``)."""

    def scalar(word: str) -> int | str:
        try:
            return int(word)
        except ValueError:
            return word

    entries: list[dict[str, Any]] = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if line[:1].isspace() and entries:
            entries[-1].setdefault("members", []).append(line.strip())
            continue
        entry: dict[str, Any] = {"name": scalar(words[0]), "values": [], "fields": {}}
        for word in words[1:]:
            key, eq, val = word.partition("=")
            if eq:
                entry["fields"][key] = scalar(val)
            else:
                entry["values"].append(scalar(word))
        entries.append(entry)
    return entries


# -- parsers -------------------------------------------------------------------------------------
def add_control_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("create", help="create an ioband device: an NBD export, or a FUSE mount of"
                       " a directory (dmsetup create)",
                       description="Create the device NAME from one table line (--table, or "
                       "stdin as with dmsetup) and export it over NBD; a table whose <device> is"
                       " a directory (length 0) is mounted with FUSE at --mount DIR.")  # fmt: skip
    p.add_argument("name", metavar="NAME")
    p.add_argument("--table", metavar="LINE", help="the table line (default: read from stdin)")
    p.add_argument("--direct", action="store_true", help="O_DIRECT on the backing store")
    p.add_argument("--read-only", action="store_true", help="a read-only export or mount")
    p.add_argument("--mount", metavar="DIR", help="mount point of a directory device (FUSE)")
    p.add_argument("--allow", metavar="RULE", action="append",
                   help="NBD: who may connect read-write (repeatable): all, unix, tcp, uid:N,"
                   " user:NAME, gid:N, group:NAME, cgroup:/PATH, net:ADDR[/PREFIX];"
                   " none given: whoever can reach the socket")  # fmt: skip
    p.add_argument(
        "--allow-ro",
        metavar="RULE",
        action="append",
        help="NBD: who may connect read-only (repeatable), same rules",
    )
    p.add_argument(
        "--writeback-cache",
        action="store_true",
        help="FUSE: the kernel delays and merges writes (charged to the opener)",
    )
    p.add_argument(
        "--no-write-behind",
        action="store_true",
        help="FUSE: buffered writes reach the backing store before write() returns",
    )
    _common(p, reads=False)
    p.set_defaults(func=cmd_create)

    for op, text in (("remove", "remove a device (dmsetup remove)"),
                     ("suspend", "suspend a device: held requests flushed, new ones wait"),
                     ("resume", "resume a suspended device")):  # fmt: skip
        p = sub.add_parser(op, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("name", metavar="NAME")
        _common(p, reads=False)
        p.set_defaults(func=cmd_simple(op))

    p = sub.add_parser("message", help="send a message to a device (dmsetup message)",
                       description="ioband message [--] NAME SECTOR WORDS...: SECTOR is 0; put "
                       "-- first when a word begins with '-' (range-bw -1:5000:6000).")  # fmt: skip
    p.add_argument("name", metavar="NAME")
    p.add_argument("sector", metavar="SECTOR")
    p.add_argument("words", metavar="WORDS", nargs="+")
    _common(p, reads=False)
    p.set_defaults(func=cmd_message)

    reads = (("table", "print table lines (dmsetup table)", cmd_table),
             ("status", "print status lines (dmsetup status)", cmd_status))  # fmt: skip
    for op, text, fn in reads:
        p = sub.add_parser(op, help=text, description=text[0].upper() + text[1:] +
                           "; without NAME, every device.")  # fmt: skip
        p.add_argument("name", metavar="NAME", nargs="?")
        p.add_argument("--target", metavar="TYPE", help="only devices of this target (ioband)")
        if op == "status":
            p.add_argument(
                "--format",
                choices=("legacy", "diskstats"),
                help="7 columns per group (legacy, default) or 12 (diskstats)",
            )
        _common(p, reads=True)
        p.set_defaults(func=fn)

    p = sub.add_parser("reload", help="re-read the daemon's configuration file (as SIGHUP)",
                       description="Re-read the configuration file the daemon was started with "
                       "and apply what it changes without closing connections: prints each "
                       "message sent, device re-created (and why) or created; a file that is "
                       "refused changes nothing and the error says why.")  # fmt: skip
    _common(p, reads=True)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("cgroup", help="the blkio-cgroup files: id, devices, settings, stats;"
                       " cgroup v2's io.weight, io.max, io.stat",
                       description="ioband cgroup FILE [CGROUP] [VALUE...]: read blkio.FILE (or"
                       " the v2 file io.*) of CGROUP (a path in the cgroup hierarchy, default /),"
                       " or write VALUE to it (devices: root cgroup, root or the admin group;"
                       " settings, stats, io.weight, io.max: also the owner of the cgroup's"
                       " directory).")  # fmt: skip
    p.add_argument("file", metavar="FILE", choices=CGROUP_FILES)
    p.add_argument("cgroup", metavar="CGROUP", nargs="?", default="/")
    p.add_argument("value", metavar="VALUE", nargs="*", help="words to write")
    _common(p, reads=True)
    p.set_defaults(func=cmd_cgroup)

    for op, text, fn in (("ls", "list the devices (dmsetup ls)", cmd_ls),
                         ("targets", "print the target and its version (dmsetup targets)",
                          cmd_targets),
                         ("info", "print what the daemon runs with", cmd_info)):  # fmt: skip
        p = sub.add_parser(op, help=text, description=text[0].upper() + text[1:] + ".")
        _common(p, reads=True)
        p.set_defaults(func=fn)
