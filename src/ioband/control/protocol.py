"""The control socket's wire format: one JSON object per line, each way.

Request: ``{"op": "message", "name": "ioband1", "words": ["weight", "40"]}``.
Reply: ``{"ok": true, "result": ...}`` or ``{"ok": false, "errno": "EINVAL", "message": "..."}``.
A request is checked here (op, field names and types, line length) before anything runs.
"""

from __future__ import annotations

import json
from typing import Any

from ioband.errors import InvalidArgument, IobandError

MAX_LINE = 64 * 1024  # bytes of one request line, newline included

# op -> {field: (type, required)}
_STR, _BOOL, _WORDS = str, bool, list
OPS: dict[str, dict[str, tuple[type, bool]]] = {
    "create": {"name": (_STR, True), "table": (_STR, True), "direct": (_BOOL, False),
               "read_only": (_BOOL, False), "mount": (_STR, False),
               "writeback_cache": (_BOOL, False), "write_behind": (_BOOL, False),
               "allow": (_WORDS, False), "allow_ro": (_WORDS, False)},
    "remove": {"name": (_STR, True)},
    "message": {"name": (_STR, True), "words": (_WORDS, True)},
    "suspend": {"name": (_STR, True)},
    "resume": {"name": (_STR, True)},
    "table": {"name": (_STR, False)},
    "status": {"name": (_STR, False), "format": (_STR, False)},
    "ls": {},
    "targets": {},
    "info": {},
    "cgroup": {"file": (_STR, True), "cgroup": (_STR, False), "value": (_STR, False)},
    "stats": {},
    "reload": {},
}  # fmt: skip

#: Ops that change the configuration: root and the admin group only.
CHANGES = frozenset({"create", "remove", "message", "suspend", "resume", "reload"})

#: Optional on every op: act with these credentials instead of the peer's (``SO_PEERCRED``).
#: Honoured for a root peer only (blkiofs, which serves other users' file writes); the server
#: refuses it from anyone else with EACCES.
AS_FIELD = "as"
AS_KEYS = ("pid", "uid", "gid")


class ProtocolError(InvalidArgument):
    """A request that is not well-formed."""


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def ok(result: Any) -> bytes:
    return encode({"ok": True, "result": result})


def error(err: IobandError) -> bytes:
    return encode({"ok": False, "errno": err.errno_name, "message": err.message})


def decode_request(line: bytes) -> dict[str, Any]:
    """A checked request, or ProtocolError saying what is wrong with it."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"Request too long: more than {MAX_LINE} bytes")
    try:
        req = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"Malformed request: not a JSON object ({err})") from None
    if not isinstance(req, dict):
        raise ProtocolError("Malformed request: not a JSON object")
    op = req.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError(f"Unknown op {op!r} (one of {', '.join(OPS)})")
    fields = OPS[op]
    for key, value in req.items():
        if key == "op":
            continue
        if key == AS_FIELD:
            _check_as(op, value)
            continue
        if key not in fields:
            raise ProtocolError(f"{op}: unknown field {key!r}")
        kind = fields[key][0]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ProtocolError(f"{op}: field {key!r} must be a {kind.__name__}")
        if kind is list and not all(isinstance(w, str) for w in value):
            raise ProtocolError(f"{op}: field {key!r} must be a list of strings")
    for key, (_, required) in fields.items():
        if required and key not in req:
            raise ProtocolError(f"{op}: field {key!r} is required")
    return req


def _check_as(op: str, value: Any) -> None:
    """``"as": {"pid": P, "uid": U, "gid": G}``, each a non-negative integer."""
    if (
        not isinstance(value, dict)
        or sorted(value) != sorted(AS_KEYS)
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32
            for v in value.values()
        )
    ):
        raise ProtocolError(f"{op}: field {AS_FIELD!r} must be an object of non-negative"
                            f" integers {', '.join(AS_KEYS)}")  # fmt: skip


def decode_reply(line: bytes) -> Any:
    """The result of a reply; an ``ok: false`` reply is raised as the IobandError it names."""
    try:
        reply = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IobandError("Malformed reply from the daemon", errno_name="EINVAL") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise IobandError("Malformed reply from the daemon", errno_name="EINVAL")
    if reply["ok"]:
        return reply.get("result")
    name = reply.get("errno")
    if not isinstance(name, str) or not name.isupper():
        name = "EINVAL"
    raise IobandError(str(reply.get("message", "")), errno_name=name)
