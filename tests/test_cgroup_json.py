"""``ioband cgroup ... --json``: a read is structured (its lines as entries), a write answers
``{"ok": true, ...}`` (it printed ``""`` before)."""

from __future__ import annotations

import json
import os

from tests.test_blkio_cgroup import cgroups, ctl  # noqa: F401  (fixtures)


def test_cgroup_reads_and_writes_as_json(ctl, cgroups):  # noqa: F811
    rel, path = cgroups("j")
    written = json.loads(ctl.ok("cgroup", "settings", rel, "vg0-lv0", "40", "--json"))
    assert written == {"ok": True, "command": "cgroup", "file": "settings", "cgroup": rel,
                       "value": "vg0-lv0 40"}  # fmt: skip
    settings = json.loads(ctl.ok("cgroup", "settings", rel, "--json"))
    assert settings["file"] == "settings" and settings["cgroup"] == rel
    assert settings["entries"] == [{"name": "vg0-lv0", "values": [], "fields": {"weight": "40%"}}]
    stats = json.loads(ctl.ok("cgroup", "stats", rel, "--json"))
    (entry,) = stats["entries"]
    assert entry["name"] == "vg0-lv0" and entry["values"] == [0] * 11
    assert stats["text"].startswith("vg0-lv0 0 ")
    reset = json.loads(ctl.ok("cgroup", "stats", rel, "vg0-lv0", "--json"))
    assert reset["ok"] is True and reset["value"] == "vg0-lv0"
    ident = json.loads(ctl.ok("cgroup", "id", rel, "--json"))
    assert ident["entries"] == [{"name": os.stat(path).st_ino, "values": [], "fields": {}}]
    devices = json.loads(ctl.ok("cgroup", "devices", "--json"))
    vg0 = devices["entries"][0]
    assert vg0["name"] == "vg0" and vg0["fields"]["policy"] == "weight"
    assert vg0["members"] == ["vg0-lv0", "vg0-lv1"]
