"""``nbdinfo --list`` against the daemon (issue 11): a client sees the exports it may open.

A device whose group type needs the peer process (``user``, ``pid``, ...) is refused to TCP
clients; building the NBD_OPT_LIST reply used to let that refusal escape the codec, and the
daemon dropped the connection with "Fatal error on transport". Now the export is left out of
a TCP client's list, and listed for a unix-socket client, which may open it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from ioband.control.config import load_config
from ioband.control.embedded import EmbeddedDaemon
from tests.conftest import require_real

SIZE = 16 << 20


@pytest.fixture
def daemon(tmp_path: Path):
    """Three exports on a unix socket and on TCP: by user, by client address, no classes."""
    for name in ("user", "client", "none"):
        with open(tmp_path / f"{name}.img", "wb") as f:
            f.truncate(SIZE)
    config = load_config(
        {
            "nbd": {"unix_socket": str(tmp_path / "nbd.sock"), "tcp": "127.0.0.1:0"},
            "device": [
                {"name": f"by{kind}",
                 "table": f"0 {SIZE // 512} ioband {tmp_path}/{kind}.img 1 0 0 {kind} weight 0 :10"}
                for kind in ("user", "client", "none")
            ],
        }
    )  # fmt: skip
    with EmbeddedDaemon(config) as d:
        d.port = d.daemon.nbd.tcp_port
        d.sock = str(tmp_path / "nbd.sock")
        yield d


def nbdinfo_list(url: str) -> set[str]:
    nbdinfo = shutil.which("nbdinfo")
    require_real(nbdinfo is not None, "nbdinfo is not installed (scripts/install.sh installs it)")
    result = subprocess.run([nbdinfo, "--list", "--json", url], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {e["export-name"] for e in json.loads(result.stdout)["exports"]}


def no_crash_logged(records: list[logging.LogRecord]) -> None:
    bad = [r for r in records if r.exc_info or "Fatal error" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


def test_list_over_tcp_leaves_out_what_tcp_cannot_open(daemon, caplog):
    caplog.set_level(logging.WARNING)
    assert nbdinfo_list(f"nbd://127.0.0.1:{daemon.port}") == {"byclient", "bynone"}
    no_crash_logged(caplog.records)


def test_list_over_the_unix_socket_shows_every_export(daemon, caplog):
    caplog.set_level(logging.WARNING)
    assert nbdinfo_list(f"nbd+unix://?socket={daemon.sock}") == {"byuser", "byclient", "bynone"}
    no_crash_logged(caplog.records)
