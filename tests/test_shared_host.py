"""Safe on a shared host, tried as a hostile local user would (issue 11): real daemon processes,
real unprivileged users (``setpriv``), real NBD clients.

- the NBD socket is root's and its group's by default; who may use an export is decided per
  device (uid, group, cgroup, network), read-only rules refuse writes with EPERM, and a refused
  client changes nothing;
- a flood of connections from one user leaves other clients and the control socket working;
- admin-group members create devices only under the allowed directories.

Needs root, setpriv, nbdinfo and qemu-io; under CI (IOBAND_REQUIRE_REAL=1) a missing one fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from ioband.cgroup.proc import find_hierarchy
from ioband.control.client import Unreachable, call
from ioband.errors import EXIT_STATUS
from tests.conftest import require_real

PYTHON = sys.executable
SIZE = 16 << 20
INTRUDER, WRITER, READER, MEMBER, FLOODER, BYSTANDER = range(61030, 61036)
USERS_GID = 100  # the group "users", which every Linux system has

#: A raw NBD client (standard library only, run by /usr/bin/python3 as another user): it asks
#: for an export with NBD_OPT_GO, writes 4 KiB at 4 MiB and prints what the server answered.
RAW_CLIENT = textwrap.dedent(
    """
    import socket, struct, sys
    path, export, family = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
    if family == "unix":
        s = socket.socket(socket.AF_UNIX); s.connect(path)
    else:
        host, port = path.rsplit(":", 1); s = socket.create_connection((host, int(port)))
    def recv(n):
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c: raise SystemExit("closed")
            b += c
        return b
    recv(18); s.sendall(struct.pack(">I", 3))
    data = struct.pack(">I", len(export)) + export + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
    while True:
        magic, opt, rep, n = struct.unpack(">QIII", recv(20)); body = recv(n)
        if rep >= 0x80000000:
            print("refused", hex(rep), body.decode(errors="replace")); sys.exit(3)
        if rep == 1: break
    if len(sys.argv) > 4:  # hold the connection until told to write
        print("ready", flush=True); sys.stdin.readline()
    try:
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 7, 4 << 20, 4096) + b"\\x66" * 4096)
        magic, error, cookie = struct.unpack(">IIQ", recv(16))
    except (OSError, SystemExit):
        print("closed"); sys.exit(4)
    print("write", error)
    """
)


def need(tool: str) -> str:
    path = shutil.which(tool)
    require_real(path is not None, f"{tool} is not installed (scripts/install.sh installs it)")
    return path  # type: ignore[return-value]


def as_user(uid: int, *argv: str, groups: int | None = None, timeout: float = 60,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:  # fmt: skip
    require_real(os.geteuid() == 0, "needs root to run clients as other users")
    need("setpriv")
    who = [f"--reuid={uid}", f"--regid={uid}"]
    who += [f"--groups={groups}"] if groups is not None else ["--clear-groups"]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/"}
    return subprocess.run([*prefix, "setpriv", *who, *argv], capture_output=True, text=True,
                          timeout=timeout, cwd="/", env=env)  # fmt: skip


def raw_write(uid: int, target: str, export: str, family: str = "unix", **kw):
    return as_user(uid, "/usr/bin/python3", "-c", RAW_CLIENT, target, export, family, **kw)


def held_client(uid: int, sock: str, export: str) -> subprocess.Popen[str]:
    """A client of ``export`` that connects, then writes when a line arrives on its stdin."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/usr/bin/python3",
            "-c", RAW_CLIENT, sock, export, "unix", "hold"]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd="/")  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    return proc


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """``ioband daemon`` as a real process, with its log."""

    def __init__(self, tmp: Path, nbd: str, devices: str, daemon: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ioband-sh-", dir="/tmp"))
        self.dir.chmod(0o755)  # reachable by other users (the socket's mode decides the rest)
        self.sock = str(self.dir / "nbd.sock")
        self.control = str(self.dir / "control.sock")
        self.config = tmp / "ioband.toml"
        self.config.write_text(
            f'[daemon]\ncontrol_socket = "{self.control}"\nstate_file = ""\n{daemon}\n'
            f'[nbd]\nunix_socket = "{self.sock}"\n{nbd}\n{devices}'
        )
        self.log = tmp / "daemon.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "ioband", "daemon", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                call(self.control, "info")
                break
            except (Unreachable, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"daemon did not start: {self.log.read_text()}")
                time.sleep(0.05)

    def uri(self, export: str = "ioband1") -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A root-owned 0644 image with known content."""
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(SIZE))
    path.chmod(0o644)
    return path


@pytest.fixture
def start(tmp_path: Path):
    daemons: list[Daemon] = []

    def start(nbd: str, devices: str, daemon: str = "") -> Daemon:
        d = Daemon(tmp_path, nbd, devices, daemon)
        daemons.append(d)
        return d

    yield start
    for d in daemons:
        d.stop()


def device(name: str, path: Path, gtype: str = "none", extra: str = "") -> str:
    table = f"0 {SIZE // 512} ioband {path} 1 0 0 {gtype} weight 0 :40"
    return f'[[device]]\nname = "{name}"\ntable = "{table}"\n{extra}\n'


# -- the socket's own permissions ------------------------------------------------------------


def test_socket_is_root_and_its_group_only_by_default(start, image):
    need("qemu-io")
    before = digest(image)
    d = start("", device("ioband1", image))
    st = os.stat(d.sock)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0
    # Any local user, the original finding: the write must not reach the image.
    run = as_user(INTRUDER, "qemu-io", "-f", "raw", "-c", "write -P 0x66 4M 4k", d.uri())
    assert "wrote" not in run.stdout and "Permission denied" in run.stderr, run
    assert digest(image) == before


def test_socket_group_lets_its_members_in(start, image):
    need("qemu-io")
    d = start('socket_group = "users"', device("ioband1", image))
    assert os.stat(d.sock).st_gid == USERS_GID
    out = as_user(MEMBER, "qemu-io", "-f", "raw", "-c", "write -P 0x66 4M 4k", d.uri(),
                  groups=USERS_GID)  # fmt: skip
    assert "wrote 4096/4096" in out.stdout, out
    assert image.read_bytes()[4 << 20 : (4 << 20) + 4096] == b"\x66" * 4096


# -- per-export rules --------------------------------------------------------------------------


def test_allow_rules_decide_who_connects_and_how(start, image, tmp_path):
    need("nbdinfo")
    rules = f'allow = ["uid:{WRITER}", "group:users"]\nallow_ro = ["uid:{READER}"]'
    d = start('socket_mode = "0666"', device("ioband1", image, extra=rules))
    before = digest(image)
    # Outside the rules: NBD_REP_ERR_POLICY with a reason, nothing written, the refusal logged.
    run = raw_write(INTRUDER, d.sock, "ioband1")
    assert run.returncode == 3 and "refused 0x80000002" in run.stdout, run
    assert "denied" in run.stdout
    info = as_user(INTRUDER, "nbdinfo", d.uri())  # libnbd shows the reason only with debug on
    assert info.returncode != 0 and "opt_go" in info.stderr, info
    # Read-only: the export is offered read-only and a write gets EPERM (1).
    ro = raw_write(READER, d.sock, "ioband1")
    assert ro.stdout.split() == ["write", "1"], ro
    info = as_user(READER, "nbdinfo", "--json", d.uri())
    assert info.returncode == 0 and '"is_read_only": true' in info.stdout, info
    assert digest(image) == before
    log = d.log.read_text()
    assert f"refused to uid {INTRUDER}" in log and "Traceback" not in log
    # Allowed by uid, and by a supplementary group: writes land.
    assert raw_write(WRITER, d.sock, "ioband1").stdout.split() == ["write", "0"]
    assert raw_write(MEMBER, d.sock, "ioband1", groups=USERS_GID).stdout.split() == ["write", "0"]
    assert image.read_bytes()[4 << 20 : (4 << 20) + 4096] == b"\x66" * 4096


def test_cgroup_rule_admits_the_processes_of_that_cgroup(start, image):
    hierarchy = find_hierarchy("auto")
    require_real(hierarchy is not None, "needs a mounted cgroup hierarchy")
    name = f"ioband-acl-{os.getpid()}"
    cgroup = hierarchy.mount / name
    cgroup.mkdir()
    try:
        rules = f'allow = ["cgroup:/{name}"]'
        d = start('socket_mode = "0666"', device("ioband1", image, extra=rules))
        outside = raw_write(INTRUDER, d.sock, "ioband1")
        assert outside.returncode == 3, outside
        enter = ("sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh")
        inside = raw_write(INTRUDER, d.sock, "ioband1", prefix=enter)
        assert inside.stdout.split() == ["write", "0"], inside
    finally:
        for _ in range(50):
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_tcp_rules_by_network(start, image):
    need("nbdinfo")
    port = free_port()
    devices = (device("lan", image, "client", 'allow = ["net:10.0.0.0/8"]')
               + device("local", image, "client", 'allow = ["net:127.0.0.0/8"]')
               + device("rootonly", image, "client", 'allow = ["uid:0"]'))  # fmt: skip
    d = start(f'tcp = "127.0.0.1:{port}"', devices)
    before = digest(image)
    for export in ("lan", "rootonly"):  # a uid rule never matches a TCP peer, not even root's
        run = raw_write(INTRUDER, f"127.0.0.1:{port}", export, "tcp")
        assert run.returncode == 3 and "refused 0x80000002" in run.stdout, (export, run)
        info = subprocess.run(["nbdinfo", f"nbd://127.0.0.1:{port}/{export}"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert info.returncode != 0 and "opt_go" in info.stderr
    assert digest(image) == before
    assert raw_write(INTRUDER, f"127.0.0.1:{port}", "local", "tcp").stdout.split() == [
        "write", "0"]  # fmt: skip
    assert "refused to address 127.0.0.1" in d.log.read_text()
    # The list shows a client only what it may open.
    listing = subprocess.run(["nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    assert {e["export-name"] for e in json.loads(listing.stdout)["exports"]} == {"local"}


def test_reload_applies_new_rules_to_open_connections(start, image):
    """A SIGHUP that changes the rules: a peer they no longer allow loses its connection once
    drained, one they now allow gets in; a reload that leaves the rules alone keeps clients."""
    d = start('socket_mode = "0666"', device("ioband1", image, extra=f'allow = ["uid:{WRITER}"]'))
    kept, dropped = held_client(WRITER, d.sock, "ioband1"), held_client(WRITER, d.sock, "ioband1")
    try:
        # the weight only: nobody loses anything
        d.config.write_text(d.config.read_text().replace(":40", ":30"))
        d.proc.send_signal(signal.SIGHUP)
        wait_for_log(d, "reload:")
        kept.stdin.write("go\n")
        kept.stdin.flush()
        assert kept.stdout.readline().split() == ["write", "0"]
        # the rules: WRITER out, READER in
        d.config.write_text(d.config.read_text().replace(f"uid:{WRITER}", f"uid:{READER}"))
        d.proc.send_signal(signal.SIGHUP)
        wait_for_log(d, "no longer allowed by allow")
        dropped.stdin.write("go\n")
        dropped.stdin.flush()
        assert dropped.stdout.readline().strip() == "closed"
        assert raw_write(WRITER, d.sock, "ioband1").returncode == 3
        assert raw_write(READER, d.sock, "ioband1").stdout.split() == ["write", "0"]
    finally:
        for proc in (kept, dropped):
            proc.kill()
            proc.wait()


def wait_for_log(d: Daemon, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in d.log.read_text():
        assert time.monotonic() < deadline, f"{text!r} not logged: {d.log.read_text()}"
        time.sleep(0.05)


# -- bounded resources -------------------------------------------------------------------------

FLOOD = textwrap.dedent(
    """
    import socket, sys, time
    path, control, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    held, refused = [], 0
    for i in range(count):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(control if i % 10 == 9 else path)
        except OSError:
            refused += 1; s.close(); continue
        held.append(s)
    print(len(held), refused, flush=True)
    time.sleep(float(sys.argv[4]))
    """
)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no fd limit")


def test_a_connection_flood_leaves_others_working(start, image):
    """20,000 connections from one user, held: other users' clients and root's control
    requests keep working, and the daemon's descriptors stay bounded."""
    need("nbdinfo")
    d = start('socket_mode = "0666"', device("ioband1", image))
    pid = d.proc.pid
    # Two processes of 10,000 each: the descriptor limit here is 20,000 per process.
    floods = [subprocess.Popen(
        ["setpriv", f"--reuid={FLOODER}", f"--regid={FLOODER}", "--clear-groups",
         "/usr/bin/python3", "-c", FLOOD, d.sock, d.control, "10000", "30"],
        stdout=subprocess.PIPE, text=True, cwd="/",
    ) for _ in range(2)]  # fmt: skip
    try:
        held = refused = 0
        for flood in floods:
            line = flood.stdout.readline().split()
            assert line, "the flood did not run"
            held += int(line[0])
            refused += int(line[1])
        assert held + refused == 20000
        # While it is held: another user, root's control socket, a root NBD client.
        info = as_user(BYSTANDER, "nbdinfo", "--size", d.uri(), timeout=30)
        assert info.returncode == 0 and int(info.stdout) == SIZE, info
        table = as_user(BYSTANDER, PYTHON, "-m", "ioband", "table", "--socket", d.control)
        assert table.returncode == 0 and "ioband1" in table.stdout, table
        assert call(d.control, "table")[0]["name"] == "ioband1"
        root = subprocess.run(["nbdinfo", "--size", d.uri()], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
        assert root.returncode == 0
        fds = open_fds(pid)
        print(f"flood: {held} connected, {refused} refused at connect; daemon fds {fds}")
        assert fds < 400, fds  # 100 of the flooder's NBD + 16 control connections, and the rest
        assert fds < fd_limit(pid) - 256
    finally:
        for flood in floods:
            flood.kill()
            flood.wait()
    log = d.log.read_text()
    assert f"refused a connection from uid {FLOODER}" in log
    assert log.count("refused a connection") < 20  # logged, not flooded
    assert "Traceback" not in log


def test_handshake_timeout_closes_idle_clients(start, image):
    d = start('socket_mode = "0666"\nhandshake_timeout = 1', device("ioband1", image))
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(d.sock)
        s.settimeout(10)
        assert len(s.recv(18)) == 18  # the greeting, then nothing from us
        start_wait = time.monotonic()
        while s.recv(4096):
            pass
        assert 0.5 < time.monotonic() - start_wait < 5


# -- the admin group ---------------------------------------------------------------------------


def ioband_as_member(control: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return as_user(MEMBER, PYTHON, "-m", "ioband", *argv, "--socket", control,
                   groups=USERS_GID)  # fmt: skip


def test_admin_group_creates_only_under_allowed_directories(start, image, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    good = allowed / "vm.img"
    good.write_bytes(b"\0" * SIZE)
    secret = tmp_path / "secret.img"
    secret.write_bytes(b"s" * SIZE)
    secret.chmod(0o600)
    (allowed / "link.img").symlink_to(secret)
    mounts = tmp_path / "mnt"
    mounts.mkdir()
    d = start("", device("ioband1", image),
              f'admin_group = "users"\nallowed_backing = ["{allowed}"]\n'
              f'allowed_mounts = ["{mounts}"]')  # fmt: skip

    def create(name: str, path: Path, *more: str) -> subprocess.CompletedProcess[str]:
        table = f"0 {SIZE // 512} ioband {path} 1 0 0 none weight 0 :1"
        return ioband_as_member(d.control, "create", name, "--table", table, *more)

    for name, path in (("bad1", secret), ("bad2", allowed / "link.img"),
                       ("bad3", allowed / ".." / "secret.img")):  # fmt: skip
        run = create(name, path)
        assert run.returncode == EXIT_STATUS["EACCES"], run
        assert "allowed_backing" in run.stderr
    outside = tmp_path / "share"
    outside.mkdir()
    run = ioband_as_member(d.control, "create", "files", "--table",
                           f"0 0 ioband {outside} 1 0 0 none weight 0 :1", "--mount",
                           str(mounts))  # fmt: skip
    assert run.returncode == EXIT_STATUS["EACCES"] and "allowed_backing" in run.stderr, run
    names = {item["name"] for item in call(d.control, "ls")}
    assert names == {"ioband1"}
    run = create("vm", good)
    assert run.returncode == 0, run
    assert {item["name"] for item in call(d.control, "ls")} == {"ioband1", "vm"}
    # root is not confined
    assert subprocess.run([PYTHON, "-m", "ioband", "create", "root1", "--socket", d.control,
                           "--table", f"0 {SIZE // 512} ioband {secret} 1 0 0 none weight 0 :1"],
                          capture_output=True, timeout=30).returncode == 0  # fmt: skip


def test_unprivileged_daemon_names_the_state_file_key():
    """A daemon started by a user with the default paths says which key to change."""
    where = Path(tempfile.mkdtemp(prefix="ioband-sh-", dir="/tmp"))
    where.chmod(0o755)
    config = where / "ioband.toml"
    config.write_text(f'[nbd]\nunix_socket = "{where}/nbd.sock"\n[daemon]\n'
                      'control_socket = ""\n')  # fmt: skip
    config.chmod(0o644)
    try:
        run = as_user(INTRUDER, PYTHON, "-m", "ioband", "daemon", "--config", str(config))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert run.returncode == EXIT_STATUS["EINVAL"], run
    assert "daemon.state_file" in run.stderr and "EIO" not in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
