"""Cluster-wide device groups for real: three ioband daemons share one backend through Redis.

The shared array is a loop device capped at 1,500 read IOPS by the kernel's blkio throttle on
the one cgroup all three daemons run in (``throttled_loop``); each daemon serves its own NBD
export over it. Tenant A (uid 61001) reads through daemon 1, tenant B (uid 61002) through
daemons 2 and 3, each with fio at depth 32. Without coordination each daemon has a third of the
array and A gets about 33 %; with ``cluster = true`` the daemons exchange their counters through
a real ``redis-server`` started here, and the hosts' windows follow the weights they carry: A
gets 50 % at weights 1:1 and 67 % at 2:1 (± 5 points). Default settings throughout (io_limit 0,
the default interval and latency target).

The fault test kills Redis in the middle of a run and starts it again: no client error, no
client without a completion for longer than an interval (from fio's per-I/O log), local shares
while it is down, cluster shares again within 2 s of its return, and each daemon says it once.

Needs root, losetup, the blkio hierarchy, fio and redis-server; under CI (IOBAND_REQUIRE_REAL=1)
their absence fails the test.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import require_real
from tests.test_nbd_fairness import (
    READ_IOPS,
    UIDS,
    as_user,
    count_at,
    fio,
    fio_reports,
    in_cgroup,
    measure,
    throttled_loop,
)

SECTORS = (256 << 20) // 512
INTERVAL_MS = 50  # the default exchange interval
TOLERANCE = 0.05  # absolute


@pytest.fixture
def array(tmp_path: Path):
    """The shared array: a throttled loop device and the cgroup the daemons must run in."""
    require_real(shutil.which("redis-server") is not None, "redis-server is not installed")
    with throttled_loop(tmp_path, f"ioband-test-{os.getpid()}-cluster", READ_IOPS) as made:
        yield made


class RedisServer:
    """A private redis-server on a unix socket (no TCP port, nothing persisted)."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "redis.sock"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        for _ in range(100):
            if self.socket.exists():
                return
            time.sleep(0.02)
        pytest.fail("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


@pytest.fixture
def redis_server():
    directory = Path(tempfile.mkdtemp(prefix="ioband-redis-", dir="/tmp"))
    server = RedisServer(directory)
    server.start()
    yield server
    server.kill()
    shutil.rmtree(directory, ignore_errors=True)


Daemons = list[tuple[subprocess.Popen[str], str, Path]]


def start_daemons(tmp_path: Path, daemon_cg: Path, loop: str, weight_a: int,
                  redis: RedisServer | None) -> Daemons:  # fmt: skip
    """Three daemons in ``daemon_cg``, each exporting ``ioband1`` over ``loop`` with tenant A
    (uid 61001) at ``weight_a`` and tenant B (uid 61002) at 1; cluster-wide when ``redis``."""
    groups = f"{UIDS['g1']}:{weight_a} {UIDS['g2']}:1"
    table = f"0 {SECTORS} ioband {loop} 1 0 0 user weight 0 :1 {groups}"
    out = []
    for i in (1, 2, 3):
        sock_dir = Path(tempfile.mkdtemp(prefix="ioband-test-", dir="/tmp"))
        sock_dir.chmod(0o755)
        sock = str(sock_dir / "nbd.sock")
        config = tmp_path / f"daemon{i}.toml"
        cluster = (
            f'[cluster]\nredis = "{redis.url}"\nname = "test{os.getpid()}"\nhost = "d{i}"\n'
            if redis is not None
            else ""
        )
        config.write_text(
            '[daemon]\ncontrol_socket = ""\nstate_file = ""\n'
            f'[nbd]\nunix_socket = "{sock}"\nsocket_mode = "0666"\n{cluster}'
            f'[[device]]\nname = "ioband1"\ntable = "{table}"\ndirect = true\n'
            f"cluster = {'true' if redis is not None else 'false'}\n"
            f"allow = [{', '.join(repr(f'uid:{u}') for u in UIDS.values())}]\n"
        )
        # -v: the agent's state every 20 exchanges in the daemon's log (read when a test fails)
        argv = [sys.executable, "-m", "ioband", "daemon", "--config", str(config), "-v"]
        log = open(tmp_path / f"daemon{i}.log", "w+")  # noqa: SIM115 (closed by stop_daemons)
        proc = subprocess.Popen(in_cgroup(daemon_cg, argv), stderr=log, text=True)
        out.append((proc, sock, tmp_path / f"daemon{i}.log"))
    for proc, sock, log_path in out:
        for _ in range(200):
            if os.path.exists(sock):
                break
            if proc.poll() is not None:
                pytest.fail(f"daemon exited: {log_path.read_text()}")
            time.sleep(0.05)
        else:
            pytest.fail("daemon did not start")
    return out


def stop_daemons(daemons: Daemons) -> list[str]:
    """Stop them; each one's log."""
    for proc, _, _ in daemons:
        proc.terminate()
    logs = []
    for proc, _, log_path in daemons:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logs.append(log_path.read_text())
    return logs


def clients(daemons: Daemons) -> dict[str, list[str]]:
    """Tenant A's fio on daemon 1, tenant B's on daemons 2 and 3."""
    (_, s1, _), (_, s2, _), (_, s3, _) = daemons
    return {
        "a": as_user("g1", fio(s1, "a")),
        "b2": as_user("g2", fio(s2, "b2")),
        "b3": as_user("g2", fio(s3, "b3")),
    }


def share_of_a(ios: dict[str, float]) -> float:
    return ios["a"] / (ios["a"] + ios["b2"] + ios["b3"])


def run_shares(tmp_path: Path, array: tuple, weight_a: int, redis: RedisServer | None) -> float:
    loop, daemon_cg, _ = array
    daemons = start_daemons(tmp_path, daemon_cg, loop, weight_a, redis)
    try:
        ios = measure(clients(daemons), warmup=1)
    finally:
        stop_daemons(daemons)
    share = share_of_a(ios)
    total = sum(ios.values())
    print(f"weights {weight_a}:1, cluster={redis is not None}: A {share:.3f} of {total} reads",
          ios)  # fmt: skip
    assert total / 9 > READ_IOPS * 0.7, f"the array was not the bottleneck: {ios}"
    return share


def test_without_cluster_the_tenant_on_one_host_gets_less_than_half(array, tmp_path):
    """The baseline the cluster setting fixes: the array serves daemons, not tenants, so A (one
    daemon of three) gets about a third at 1:1 (28-36 % measured in most runs, up to 45 % when
    its daemon's adaptive window ran wider than the other two): less than its half."""
    share = run_shares(tmp_path, array, 1, None)
    assert share < 0.5, f"A got {share:.3f} without the cluster setting"


def test_cluster_weights_1_to_1(array, tmp_path, redis_server):
    share = run_shares(tmp_path, array, 1, redis_server)
    assert abs(share - 0.5) <= TOLERANCE, f"A got {share:.3f}, owed 0.5"


def test_cluster_weights_2_to_1(array, tmp_path, redis_server):
    """Owed 67 %. The array is a token bucket (blk-throttle), not a queue: a host's lone
    request is served at once from the slice's budget where a deep host's wait for the next
    slice, so windows in proportion to the weights do not give service in proportion. The
    hosts' latency correction and service trim (see ``ioband.cluster.coordinator``) make up
    for it: 65.7-67.0 % measured (54-62.5 % with windows by weight alone)."""
    share = run_shares(tmp_path, array, 2, redis_server)
    assert abs(share - 2 / 3) <= TOLERANCE, f"A got {share:.3f}, owed 0.667"


FAULT_RUNTIME = 18  # seconds each fio runs in the fault test
KILL_AT = 6  # seconds after the last client started: Redis is killed
RESTART_AT = 10  # and started again


def fio_logged(sock: str, name: str, log_prefix: Path) -> list[str]:
    """fio as in the other tests, for FAULT_RUNTIME, logging every completion (its time in ms
    since the job started), to find the longest time a client went without one."""
    argv = [a for a in fio(sock, name) if not a.startswith("--runtime=")]
    return [*argv, f"--runtime={FAULT_RUNTIME}", f"--write_lat_log={log_prefix}",
            "--log_avg_msec=0"]  # fmt: skip


def completion_gaps(log: Path, start: float, end: float) -> float:
    """The longest time, in seconds, between two completions logged between ``start`` and
    ``end`` (seconds since the job started)."""
    times = []
    for line in log.read_text().splitlines():
        ms = int(line.split(",")[0])
        if start * 1000 <= ms <= end * 1000:
            times.append(ms)
    times.sort()
    return max((b - a for a, b in itertools.pairwise(times)), default=0) / 1000


def test_redis_killed_mid_run(array, tmp_path, redis_server):
    """Redis killed while the three clients run, then started again: no client error, no
    client without a completion for an interval longer than the longest it went without one
    before the fault, local control while it is down (each daemon logs the fallback and the
    return once; A falls from its cluster share: 36-41 % measured, the local behaviour, which
    is 28-45 % for this array), cluster shares within 2 s of its return."""
    loop, daemon_cg, _ = array
    daemons = start_daemons(tmp_path, daemon_cg, loop, 1, redis_server)
    (_, s1, _), (_, s2, _), (_, s3, _) = daemons
    log_dir = Path(tempfile.mkdtemp(prefix="ioband-fio-", dir="/tmp"))
    log_dir.chmod(0o777)  # the clients run as their tenants' uids
    logs = {name: log_dir / f"fio-{name}" for name in ("a", "b2", "b3")}
    argvs = {
        "a": as_user("g1", fio_logged(s1, "a", logs["a"])),
        "b2": as_user("g2", fio_logged(s2, "b2", logs["b2"])),
        "b3": as_user("g2", fio_logged(s3, "b3", logs["b3"])),
    }
    try:
        procs = {n: subprocess.Popen(a, stdout=subprocess.PIPE, text=True, cwd=log_dir)
                 for n, a in argvs.items()}  # fmt: skip
        started = time.time()
        time.sleep(KILL_AT)
        killed = time.time()
        redis_server.kill()
        time.sleep(RESTART_AT - KILL_AT)
        redis_server.start()
        restarted = time.time()
        reports = {}
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=FAULT_RUNTIME + 60)
            assert proc.returncode == 0, f"client {name} failed"
            reports[name] = fio_reports(out)  # asserts each report's error == 0
    finally:
        daemon_logs = stop_daemons(daemons)

    def share_between(t0: float, t1: float) -> float:
        got = {n: count_at(r, t1) - count_at(r, t0) for n, r in reports.items()}
        return share_of_a(got)

    end = min(r[-1][0] for r in reports.values())
    before = share_between(started + 2, killed)
    down = share_between(killed + 1, restarted)
    back = share_between(restarted + 2, end)
    print(f"A: before {before:.3f}, Redis down {down:.3f}, back (from 2 s after) {back:.3f}")
    gaps = {}
    for name in logs:
        clat = next(log_dir.glob(f"fio-{name}_clat.*.log"))
        # Job-relative seconds: each job started at about ``started`` (within a second).
        fault = (killed - started - 0.5, restarted - started + 2)
        gaps[name] = (completion_gaps(clat, 1, fault[0]), completion_gaps(clat, *fault))
    print("longest gap without a completion (s), before / around the fault:", gaps)
    for name, (gap_before, gap_fault) in gaps.items():
        # The fault may add no stall longer than an interval to what the same client showed
        # before it (on a loaded machine a client goes ~0.1 s without a completion anyway).
        assert gap_fault <= gap_before + INTERVAL_MS / 1000, (
            f"client {name} stalled {gap_fault:.3f} s around the fault "
            f"(before it: at most {gap_before:.3f} s)"
        )
    assert abs(before - 0.5) <= TOLERANCE, f"before the fault A got {before:.3f}"
    assert down < before, f"with Redis down A kept its cluster share ({down:.3f})"
    assert abs(back - 0.5) <= TOLERANCE, f"after Redis returned A got {back:.3f}"
    for text in daemon_logs:
        assert text.count("Redis unreachable") == 1, text
        assert text.count("Redis reachable again") == 1, text


# -- the agent against a real Redis, without a data path (fast) ------------------------------


def test_agents_exchange_through_redis_fall_back_and_rejoin(redis_server, caplog):
    """Three agents in one process (each with its own engine) against the real redis-server:
    shares from the weights each host carries, remote service charged, local control within
    an interval of Redis being killed (logged once), cluster control again when it returns."""
    import asyncio
    import logging

    from ioband.cluster.agent import ClusterAgent, ClusterSettings
    from ioband.core.engine import Engine
    from ioband.core.request import Request, Submitter
    from tests.core_driver import Driver

    require_real(shutil.which("redis-server") is not None, "redis-server is not installed")
    interval = 0.02
    table = "0 100 ioband sda 1 0 0 user weight 0 :1 1000:1 2000:1"
    hosts = {"h1": 1000, "h2": 2000, "h3": 2000}  # tenant A (uid 1000) on h1, B on h2 and h3

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        agents, drivers, charged = {}, {}, {}
        for host, uid in hosts.items():
            engine = Engine()
            driver = Driver(engine)
            dev = engine.create("vol", table)
            for _ in range(4):  # in flight: the tenant is active here
                driver.submit(dev, Request(False, 0, 4096, Submitter(pid=uid, uid=uid)))
            agent = ClusterAgent(
                ClusterSettings(redis_server.url, f"t{os.getpid()}", interval, host),
                engine, lambda: ["vol"],
                lambda e=engine: int((loop.time() - t0) * e.hz), lambda: None,
            )  # fmt: skip
            agent.start()
            agents[host], drivers[host] = agent, (driver, dev, uid)
        try:
            await asyncio.sleep(0.4)
            status = {h: a.device_status("vol") for h, a in agents.items()}
            assert status["h1"]["share"] == pytest.approx(0.5)
            assert status["h2"]["share"] == pytest.approx(0.25)
            assert all(s["peers"] == 2 and not s["local_control"] for s in status.values())
            assert all(0.5 <= s["trim"] <= 2.0 for s in status.values())  # shown, bounded
            assert agents["h1"].members["vol"].window.share == pytest.approx(0.5)
            # Service on h2 is charged to tenant B on h3 (not to anyone on h1: B is idle there).
            driver, dev, uid = drivers["h2"]
            before = sum(dev.groups[uid].ios)
            # What ``charge_remote`` took from tenant B's group on each host (the compiled
            # policy's methods cannot be wrapped: read the tokens it spends and its carry).
            for host, (_, hdev, _) in drivers.items():
                g = hdev.groups[2000]
                charged[host] = (g.token, g.remote_carry)
            for _ in range(6):
                driver.submit(dev, Request(False, 0, 4096, Submitter(pid=uid, uid=uid)))
                driver.complete(0)  # the window has room again: the next one is issued
            served = sum(dev.groups[uid].ios) - before
            await asyncio.sleep(0.2)
            spent = {}
            for host, (_, hdev, _) in drivers.items():
                g = hdev.groups[2000]
                token, carry = charged[host]
                spent[host] = (token - g.token) + (g.remote_carry - carry)
            assert served >= 6 and spent["h3"] == pytest.approx(served), spent
            assert spent["h1"] == 0, spent
            # Redis killed: every host on local control within an interval or two.
            redis_server.kill()
            await asyncio.sleep(3 * interval)
            for agent in agents.values():
                s = agent.device_status("vol")
                assert s["local_control"] and s["share"] == 1.0
                assert agent.members["vol"].window.share == 1.0
            await asyncio.sleep(0.2)  # still down: nothing more logged
            redis_server.start()
            await asyncio.sleep(0.3)
            status = {h: a.device_status("vol") for h, a in agents.items()}
            assert status["h1"]["share"] == pytest.approx(0.5), status
            assert all(not s["local_control"] for s in status.values())
        finally:
            for agent in agents.values():
                await agent.stop()

    with caplog.at_level(logging.WARNING, logger="ioband.cluster"):
        asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records]
    assert sum("Redis unreachable" in m for m in said) == 3, said  # once per host
    assert sum("Redis reachable again" in m for m in said) == 3, said
