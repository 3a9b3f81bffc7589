"""NBD over TCP with and without TLS, side by side: what encryption costs ioband's data path.

One ioband daemon per variant (control off: the scheduler is not what is measured), the same
backing file (random data, in the page cache), ``nbdcopy`` (libnbd, gnutls) reading the whole
export to ``null:`` and writing it back from a file, 1 MiB requests, over 127.0.0.1:

* plain TCP;
* TLS with X.509 certificates, through the event loop's ``start_tls`` (stdlib ``ssl``);
* TLS with a PSK, through ioband.nbd.tls.TlsLayer (pyOpenSSL over memory BIOs);
* TLS with X.509 through that same layer (certificates and a PSK file configured together).

Prints MiB/s, the ratio to plain TCP, and the daemon's CPU seconds per GiB moved (user +
system, from /proc: on a shared machine the steadier figure of what TLS costs the server);
writes benchmarks/results/nbd_tls.json.

Usage: python benchmarks/nbd_tls.py [--size-mib 256] [--loop uvloop|asyncio] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def openssl(*argv: str, cwd: Path) -> None:
    subprocess.run(["openssl", *argv], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    """(server certificate directory, client certificate directory, PSK file)."""
    server, client = d / "server", d / "client"
    server.mkdir()
    client.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out",
            "ca-cert.pem", "-days", "2", "-subj", "/CN=bench CA", "-addext",
            "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            cwd=d)  # fmt: skip
    (d / "s.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,"
                             "keyEncipherment\nextendedKeyUsage=serverAuth\n"
                             "subjectAltName=IP:127.0.0.1,DNS:localhost\n")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server/server-key.pem", "-out",
            "s.csr", "-subj", "/CN=localhost", cwd=d)  # fmt: skip
    openssl("x509", "-req", "-in", "s.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-out", "server/server-cert.pem", "-days", "2", "-extfile",
            "s.ext", cwd=d)  # fmt: skip
    for where in (server, client):
        shutil.copy(d / "ca-cert.pem", where / "ca-cert.pem")
    psk = d / "keys.psk"
    psk.write_text(f"bench:{os.urandom(32).hex()}\n")
    psk.chmod(0o600)
    return server, client, psk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ioband(image: Path, tmp: Path, name: str, port: int, nbd: str, loop: str):
    config = tmp / f"{name}.toml"
    sock = tmp / f"{name}.sock"
    sectors = image.stat().st_size // 512
    config.write_text(
        '[daemon]\ncontrol_socket = ""\nstate_file = ""\n'
        f'[nbd]\nunix_socket = "{sock}"\ntcp = "127.0.0.1:{port}"\n{nbd}'
        f'[[device]]\nname = "disk"\ntable = "0 {sectors} ioband {image} bench 0 0 none'
        ' weight 0 :100"\ncontrol = false\n'
    )
    env = dict(os.environ, IOBAND_EVENT_LOOP=loop)
    proc = subprocess.Popen([sys.executable, "-m", "ioband", "daemon", "--config", str(config)],
                            env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 15
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ioband did not start ({config})")
        time.sleep(0.05)
    return proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def nbdcopy(src: str, dst: str, size: int, pid: int) -> tuple[float, float]:
    """(MiB/s, server CPU seconds per GiB)."""
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    subprocess.run(["nbdcopy", "--request-size=1048576", src, dst], check=True)
    elapsed = time.perf_counter() - start
    return size / elapsed / (1 << 20), (cpu_seconds(pid) - cpu) / (size / (1 << 30))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of each is kept")
    ap.add_argument("--out", default="benchmarks/results/nbd_tls.json")
    args = ap.parse_args(argv)
    for tool in ("nbdcopy", "openssl"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (scripts/install.sh installs it)", file=sys.stderr)
            return 1
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="ioband-tls-bench-") as name:
        tmp = Path(name)
        server, client, psk = make_pki(tmp)
        image = tmp / "disk.img"
        src = tmp / "src.raw"
        with open(image, "wb") as f, open(src, "wb") as g:
            for _ in range(args.size_mib):
                block = os.urandom(1 << 20)
                f.write(block)
                g.write(block)
        certs = f'tls_certificates = "{server}"\n'
        keys = f'tls_psk_file = "{psk}"\n'
        variants = {  # name: ([nbd] keys, URI with {port})
            "plain TCP": ("", "nbd://127.0.0.1:{port}/disk"),
            "TLS X.509 (start_tls)": ('tls = "require"\n' + certs,
                                      f"nbds://127.0.0.1:{{port}}/disk?tls-certificates={client}"),
            "TLS PSK (TlsLayer)": ('tls = "require"\n' + keys,
                                   f"nbds://bench@127.0.0.1:{{port}}/disk?tls-psk-file={psk}"),
            "TLS X.509 (TlsLayer)": ('tls = "require"\n' + certs + keys,
                                     f"nbds://127.0.0.1:{{port}}/disk?tls-certificates={client}"),
        }  # fmt: skip
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for round_ in range(args.repeat):  # interleaved: a busy moment hurts all alike
            for i, (variant, (nbd, uri)) in enumerate(variants.items()):
                port = free_port()
                proc = start_ioband(image, tmp, f"{round_}-{i}", port, nbd, args.loop)
                try:
                    url = uri.format(port=port)
                    read, read_cpu = nbdcopy(url, "null:", size, proc.pid)
                    write, write_cpu = nbdcopy(str(src), url, size, proc.pid)
                    runs[variant].append({"read": read, "write": write, "read_cpu": read_cpu,
                                          "write_cpu": write_cpu})  # fmt: skip
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    results = {
        v: {"read": max(r["read"] for r in rs), "write": max(r["write"] for r in rs),
            "read_cpu_s_per_gib": min(r["read_cpu"] for r in rs),
            "write_cpu_s_per_gib": min(r["write_cpu"] for r in rs)}
        for v, rs in runs.items()
    }  # fmt: skip
    base = results["plain TCP"]
    print(f"NBD over TCP, nbdcopy of {args.size_mib} MiB, 1 MiB requests, best of {args.repeat}"
          f" ({args.loop}; Python {platform.python_version()})")  # fmt: skip
    print(f"{'variant':<24} {'read MiB/s':>11} {'ratio':>6} {'write MiB/s':>12} {'ratio':>6}"
          f" {'server CPU s/GiB read':>22} {'write':>6}")  # fmt: skip
    for variant, r in results.items():
        print(f"{variant:<24} {r['read']:>11,.0f} {r['read'] / base['read']:>6.2f}"
              f" {r['write']:>12,.0f} {r['write'] / base['write']:>6.2f}"
              f" {r['read_cpu_s_per_gib']:>22.2f} {r['write_cpu_s_per_gib']:>6.2f}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "loop": args.loop, "size_mib": args.size_mib,
            "repeat": args.repeat, "client": "nbdcopy --request-size=1048576"}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
