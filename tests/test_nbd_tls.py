"""TLS on the NBD server: the codec's NBD_OPT_STARTTLS handling (sans-I/O, malformed input
included), the ``[nbd] tls*`` configuration keys, and real gnutls clients (qemu-img, nbdinfo,
nbdcopy) over X.509 and PSK against a daemon with a TCP listener.

Certificates are made here with the ``openssl`` CLI: a CA, a server certificate for
127.0.0.1/localhost, a client certificate, and a second CA nobody trusts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioband.control.config import ConfigError, load_config
from ioband.control.embedded import EmbeddedDaemon
from ioband.nbd import tls as nbdtls
from ioband.nbd.protocol import (
    Disconnect,
    ExportChosen,
    ProtocolError,
    StartTls,
    TlsMode,
)
from tests.conftest import require_real
from tests.control_helpers import start_error
from tests.test_nbd_protocol import (
    ABORT,
    ACK,
    ERR,
    ERR_INVALID,
    ERR_SHUTDOWN,
    ERR_UNSUP,
    EXPORT_NAME,
    EXTENDED_HEADERS,
    GO,
    GREETING,
    I_BLOCK_SIZE,
    INFO,
    LIST,
    LIST_META,
    OPT_REPLY_MAGIC,
    PEEK,
    RW_FLAGS,
    SET_META,
    STARTTLS,
    STRUCTURED,
    MiB,
    drain,
    feed,
    go_data,
    info_block_size,
    info_export,
    make,
    meta_data,
    opt,
    rep,
    rep_err,
    started,
)

ERR_POLICY, ERR_TLS_REQD = ERR + 2, ERR + 5
DF_FLAG = 128


@pytest.fixture(autouse=True)
def no_event_loop_complaints(caplog):
    """The event loops' own loggers stay quiet: an exception in a protocol callback, or a
    warning like 'returning true from eof_received() has no effect when using ssl', fails."""
    yield
    loud = [r for r in caplog.get_records("call") if r.name == "asyncio" and r.levelno >= 30]
    assert not loud, [r.getMessage() for r in loud]


# -- the codec -----------------------------------------------------------------------------------


def test_mode_values_and_default():
    assert make().tls_mode is TlsMode.OFF
    assert [m.value for m in TlsMode] == ["off", "on", "require"]
    assert make(tls="require").tls_mode is TlsMode.REQUIRE
    with pytest.raises(ValueError):
        make(tls="yes")


def test_off_mode_starttls_is_unsupported():
    conn = started()
    assert feed(conn, opt(STARTTLS)) == []
    assert conn.data_to_send() == rep_err(STARTTLS, ERR_UNSUP, "NBD_OPT_STARTTLS is not supported")
    assert not conn.tls_active


@pytest.mark.parametrize("mode", ["on", "require"])
def test_starttls_acknowledged_then_options_go_on_over_tls(mode):
    conn = started(tls=mode)
    assert feed(conn, opt(STARTTLS)) == [StartTls()]
    assert conn.data_to_send() == rep(STARTTLS, ACK)
    assert conn.tls_active
    # What follows is the decrypted stream: an ordinary negotiation.
    [event] = feed(conn, opt(STRUCTURED) + opt(GO, go_data(b"disk")))
    assert isinstance(event, ExportChosen) and event.structured_replies
    assert conn.data_to_send() == (
        rep(STRUCTURED, ACK) + info_export(GO, MiB, RW_FLAGS | DF_FLAG) + info_block_size(GO)
        + rep(GO, ACK)
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["on", "require"])
def test_second_starttls_is_invalid(mode):
    conn = started(tls=mode)
    assert feed(conn, opt(STARTTLS)) == [StartTls()]
    conn.data_to_send()
    assert feed(conn, opt(STARTTLS)) == []
    assert conn.data_to_send() == rep_err(STARTTLS, ERR_INVALID, "TLS is already active")
    [event] = feed(conn, opt(GO, go_data(b"disk")))
    assert isinstance(event, ExportChosen)


@pytest.mark.parametrize("mode", ["on", "require"])
@pytest.mark.parametrize("payload", [b"x", b"\x00" * 4, opt(ABORT), bytes(range(256)) * 4])
def test_starttls_with_data_is_invalid_and_data_skipped(mode, payload):
    conn = started(tls=mode)
    stream = opt(STARTTLS, payload) + opt(STARTTLS)
    events = []
    for i in range(0, len(stream), 5):  # in pieces too
        events += feed(conn, stream[i : i + 5])
    assert events == [StartTls()]
    assert conn.data_to_send() == (
        rep_err(STARTTLS, ERR_INVALID, "NBD_OPT_STARTTLS takes no data") + rep(STARTTLS, ACK)
    )


@pytest.mark.parametrize(
    ("option", "payload", "name"),
    [
        (LIST, b"", "NBD_OPT_LIST"),
        (STRUCTURED, b"", "NBD_OPT_STRUCTURED_REPLY"),
        (INFO, go_data(b"disk"), "NBD_OPT_INFO"),
        (GO, go_data(b"disk", I_BLOCK_SIZE), "NBD_OPT_GO"),
        (GO, b"\xff" * 3, "NBD_OPT_GO"),  # malformed: refused for TLS first
        (SET_META, meta_data(b"disk", b"base:allocation"), "NBD_OPT_SET_META_CONTEXT"),
        (LIST_META, meta_data(b"disk"), "NBD_OPT_LIST_META_CONTEXT"),
        (EXTENDED_HEADERS, b"", "NBD_OPT_EXTENDED_HEADERS"),
        (PEEK, b"abc", "NBD_OPT_PEEK_EXPORT"),
        (12345, bytes(100), "option 12345"),
    ],
)
def test_require_refuses_every_option_before_tls_then_serves_it(option, payload, name):
    conn = started(tls="require")
    stream = opt(option, payload) + opt(option, payload)
    for i in range(0, len(stream), 3):
        assert feed(conn, stream[i : i + 3]) == []
    refused = rep_err(option, ERR_TLS_REQD, f"{name}: TLS is required, send NBD_OPT_STARTTLS first")
    assert conn.data_to_send() == refused + refused
    assert conn.buffered_bytes == 0  # payloads skipped, not buffered
    assert feed(conn, opt(STARTTLS)) == [StartTls()]
    conn.data_to_send()
    events = feed(conn, opt(option, payload))
    refused_again = OPT_REPLY_MAGIC + struct.pack(">II", option, ERR_TLS_REQD)
    assert not conn.data_to_send().startswith(refused_again)
    assert all(not isinstance(e, ProtocolError) for e in events)


def test_require_export_name_before_tls_ends_the_session():
    conn = started(tls="require")
    [event] = feed(conn, opt(EXPORT_NAME, b"disk"))
    assert isinstance(event, ProtocolError) and "TLS" in event.reason
    assert conn.data_to_send() == b""  # no export information leaks
    conn = started(tls="require")
    assert feed(conn, opt(STARTTLS)) == [StartTls()]
    [event] = feed(conn, opt(EXPORT_NAME, b"disk"))
    assert isinstance(event, ExportChosen)


def test_require_abort_before_tls_is_acknowledged():
    conn = started(tls="require")
    assert feed(conn, opt(ABORT, b"junk")) == [Disconnect(clean=True)]
    assert conn.data_to_send() == rep(ABORT, ACK)


@pytest.mark.parametrize("flags", [0, 2])  # plain newstyle: the spec serves it NOTLS
def test_require_closes_a_client_without_fixed_newstyle(flags):
    conn = make(tls="require")
    assert conn.data_to_send() == GREETING
    [event] = feed(conn, struct.pack(">I", flags))
    assert isinstance(event, ProtocolError) and "fixed newstyle" in event.reason


def test_on_mode_serves_a_plain_newstyle_client_without_tls():
    conn = make(tls="on")
    conn.data_to_send()
    assert feed(conn, struct.pack(">I", 0) + opt(STARTTLS)) == []
    assert conn.data_to_send() == rep_err(STARTTLS, ERR_POLICY,
                                          "TLS needs fixed newstyle negotiation")  # fmt: skip
    [event] = feed(conn, opt(EXPORT_NAME, b"disk"))
    assert isinstance(event, ExportChosen)


def test_on_mode_serves_plaintext_clients():
    conn = started(tls="on")
    [event] = feed(conn, opt(LIST) + opt(GO, go_data(b"disk")))
    assert isinstance(event, ExportChosen) and not conn.tls_active


@pytest.mark.parametrize("injected", [b"I", opt(LIST), opt(GO, go_data(b"disk")), b"\x16\x03\x01"])
def test_plaintext_after_starttls_is_an_injection_and_closes(injected):
    """The client may send nothing between STARTTLS and the ACK: bytes there were injected
    (in plaintext, by someone in the middle) and must not be read as if from inside TLS."""
    conn = started(tls="on")
    [event] = feed(conn, opt(STARTTLS) + injected)
    assert isinstance(event, ProtocolError) and "before the TLS handshake" in event.reason
    assert conn.data_to_send() == b""  # not even the ACK
    assert not conn.tls_active


def test_plaintext_negotiation_is_forgotten_after_starttls():
    """Structured replies and the meta context negotiated before STARTTLS could have been
    injected: the TLS session starts from scratch (nbdkit's CVE-2021-3716)."""
    conn = started(tls="on")
    feed(conn, opt(STRUCTURED) + opt(SET_META, meta_data(b"meta", b"base:allocation")))
    assert conn.structured_replies
    conn.data_to_send()
    assert feed(conn, opt(STARTTLS)) == [StartTls()]
    assert not conn.structured_replies
    [event] = feed(conn, opt(GO, go_data(b"meta")))
    assert isinstance(event, ExportChosen)
    assert not event.structured_replies and not event.base_allocation
    assert not event.transmission_flags & DF_FLAG


def test_starttls_while_shutting_down():
    conn = started(tls="require")
    conn.start_shutdown()
    assert feed(conn, opt(STARTTLS)) == []
    assert conn.data_to_send() == rep_err(STARTTLS, ERR_SHUTDOWN, "server is shutting down")


def test_require_handshake_one_byte_at_a_time():
    stream = struct.pack(">I", 3) + opt(LIST) + opt(GO, go_data(b"disk")) + opt(STARTTLS)
    conn = make(tls="require")
    conn.data_to_send()
    events = []
    for b in stream:
        events += feed(conn, bytes([b]))
    assert events == [StartTls()]
    out = conn.data_to_send()
    assert out.endswith(rep(STARTTLS, ACK))
    assert out.count(struct.pack(">I", ERR_TLS_REQD)) == 2


def _replies(out: bytes) -> list[tuple[int, int]]:
    """(option, reply type) of each option reply in ``out``."""
    replies = []
    pos = 0
    while pos < len(out):
        magic, option, rtype, length = struct.unpack_from(">8sIII", out, pos)
        assert magic == OPT_REPLY_MAGIC
        replies.append((option, rtype))
        pos += 20 + length
    assert pos == len(out)
    return replies


options = st.tuples(
    st.sampled_from([EXPORT_NAME, ABORT, LIST, PEEK, STARTTLS, INFO, GO, STRUCTURED, LIST_META,
                     SET_META, EXTENDED_HEADERS, 0, 99, 0xFFFFFFFF]),
    st.one_of(st.just(b""), st.binary(max_size=40), st.just(go_data(b"disk"))),
)  # fmt: skip


@given(st.lists(options, max_size=12), st.integers(1, 64))
def test_fuzz_require_never_negotiates_before_tls(sequence, piece):
    """Whatever a client sends, before STARTTLS nothing is served: every reply is
    NBD_REP_ERR_TLS_REQD, but ABORT's ACK and a malformed STARTTLS's ERR_INVALID."""
    conn = started(tls="require")
    stream = b"".join(opt(o, d) for o, d in sequence)
    events = []
    for i in range(0, len(stream), piece):
        conn.receive_data(stream[i : i + piece])
        events += drain(conn)
        if any(isinstance(e, StartTls | Disconnect | ProtocolError) for e in events):
            break
    assert not any(isinstance(e, ExportChosen) for e in events)
    for option, rtype in _replies(conn.data_to_send()):
        if option == ABORT:
            assert rtype == ACK
        elif option == STARTTLS:
            assert rtype in (ACK, ERR_INVALID)
        else:
            assert rtype == ERR_TLS_REQD


# -- configuration -------------------------------------------------------------------------------


def test_tls_keys_default_off():
    config = load_config({"nbd": {"unix_socket": "/tmp/x.sock"}})
    assert config.tls == "off" and config.tls_certificates is None
    assert config.tls_psk_file is None and config.tls_verify_peer is False
    config = load_config('[nbd]\ntcp = "127.0.0.1:0"\ntls = "require"\n'
                         'tls_certificates = "/etc/x"\ntls_verify_peer = true\n')  # fmt: skip
    assert (config.tls, config.tls_certificates, config.tls_verify_peer) == ("require", "/etc/x",
                                                                             True)  # fmt: skip


@pytest.mark.parametrize(
    ("nbd", "key", "rule"),
    [
        ({"tls": "yes"}, "nbd.tls", "must be 'off', 'on' or 'require'"),
        ({"tls": True}, "nbd.tls", "'off', 'on' or 'require'"),
        ({"tls": "require"}, "nbd.tls", "needs credentials"),
        ({"tls": "on", "tls_certificates": ""}, "nbd.tls", "needs credentials"),
        ({"tls": "on", "tls_psk_file": "/k", "tls_verify_peer": True}, "nbd.tls_verify_peer",
         "needs tls_certificates"),
        ({"tls_verify_peer": "yes"}, "nbd.tls_verify_peer", "true or false"),
        ({"tls_certificates": 1}, "nbd.tls_certificates", "a path"),
        ({"tls_psk_file": ["a"]}, "nbd.tls_psk_file", "a path"),
        ({"tls_psk": "/k"}, "nbd.tls_psk", "did you mean 'tls_psk_file'"),
    ],
)  # fmt: skip
def test_tls_refusals_name_key_and_rule(nbd, key, rule):
    with pytest.raises(ConfigError) as info:
        load_config({"nbd": {"unix_socket": "/tmp/x.sock", **nbd}})
    assert info.value.key == key
    assert rule in str(info.value)


def tls_config(tmp_path: Path, **nbd: Any):
    return load_config({"nbd": {"unix_socket": str(tmp_path / "s.sock"), "tls": "on", **nbd}})


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("alice\n", "line 1: expected 'username:hexkey'"),
        ("# comment\n:abcd\n", "line 2: expected 'username:hexkey'"),
        ("alice:xyz\n", "line 1: the key is not hexadecimal"),
        ("alice:abc\n", "line 1: the key is not hexadecimal"),  # odd length
        ("alice:\n", "line 1: the key must be 1..256 bytes"),
        ("alice:00\nalice:01\n", "line 2: user 'alice' given twice"),
        ("\n# nobody\n", "has no 'username:hexkey' line"),
        (b"alice:\xff\xfe\n", "not UTF-8"),
    ],
)
def test_malformed_psk_file_refuses_the_start(tmp_path, text, rule):
    path = tmp_path / "keys.psk"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(0o600)
    err = start_error(tls_config(tmp_path, tls_psk_file=str(path)))
    assert err.key == "nbd.tls_psk_file" and rule in str(err), str(err)


def test_unreadable_psk_file_refuses_the_start(tmp_path):
    err = start_error(tls_config(tmp_path, tls_psk_file=str(tmp_path / "missing.psk")))
    assert err.key == "nbd.tls_psk_file" and "cannot read" in str(err)
    err = start_error(tls_config(tmp_path, tls_psk_file=str(tmp_path)))
    assert err.key == "nbd.tls_psk_file"


def test_psk_file_readable_by_others_is_warned_about(tmp_path, caplog):
    path = tmp_path / "keys.psk"
    path.write_text("alice:00ff\nbob:0102\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, "ioband.nbd"):
        assert nbdtls.read_psk_file(str(path)) == {"alice": b"\x00\xff", "bob": b"\x01\x02"}
    assert "chmod 600" in caplog.text


# -- certificates (openssl CLI) ------------------------------------------------------------------


def need(tool: str) -> str:
    path = shutil.which(tool)
    require_real(path is not None, f"{tool} is not installed (scripts/install.sh installs it)")
    return path  # type: ignore[return-value]


def _openssl(*argv: str, cwd: Path) -> None:
    subprocess.run(["openssl", *argv], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
             "-out", f"{name}-cert.pem", "-days", "2", "-subj", f"/CN=ioband test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip


def _leaf(d: Path, ca: str, out: str, cn: str, ext: str) -> None:
    (d / f"{out}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{out}-key.pem", "-out",
             f"{out}.csr", "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{out}.csr", "-CA", f"{ca}-cert.pem", "-CAkey",
             f"{ca}-key.pem", "-CAcreateserial", "-out", f"{out}-cert.pem", "-days", "2",
             "-extfile", f"{out}.ext", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """Directories laid out as qemu's tls-creds-x509 and libnbd's tls-certificates want them:
    ``server`` (ca-cert, server-cert, server-key), ``client`` (ca-cert, client-cert,
    client-key), ``nocert`` (ca-cert only), ``untrusted`` (another CA and a client of it),
    ``stranger`` (our CA, a client certificate of the other CA);
    ``psk``/``wrongpsk``/``bob`` hold a keys.psk each."""
    need("openssl")
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other")
    leaf = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    _leaf(d, "ca", "server", "localhost", leaf + "extendedKeyUsage=serverAuth\n"
          "subjectAltName=IP:127.0.0.1,DNS:localhost\n")  # fmt: skip
    _leaf(d, "ca", "client", "client1", leaf + "extendedKeyUsage=clientAuth\n")
    _leaf(d, "other", "stranger", "stranger", leaf + "extendedKeyUsage=clientAuth\n")
    dirs = {name: d / name for name in ("server", "client", "nocert", "untrusted", "stranger",
                                        "psk", "wrongpsk", "bob")}  # fmt: skip
    for path in dirs.values():
        path.mkdir()
    for name in ("server", "client", "nocert", "stranger"):
        shutil.copy(d / "ca-cert.pem", dirs[name] / "ca-cert.pem")
    for name in ("server-cert.pem", "server-key.pem"):
        shutil.copy(d / name, dirs["server"] / name)
    for name in ("client-cert.pem", "client-key.pem"):
        shutil.copy(d / name, dirs["client"] / name)
    shutil.copy(d / "other-cert.pem", dirs["untrusted"] / "ca-cert.pem")
    shutil.copy(d / "stranger-cert.pem", dirs["untrusted"] / "client-cert.pem")
    shutil.copy(d / "stranger-key.pem", dirs["untrusted"] / "client-key.pem")
    shutil.copy(d / "stranger-cert.pem", dirs["stranger"] / "client-cert.pem")
    shutil.copy(d / "stranger-key.pem", dirs["stranger"] / "client-key.pem")
    (dirs["psk"] / "keys.psk").write_text(f"alice:{os.urandom(32).hex()}\n")
    (dirs["wrongpsk"] / "keys.psk").write_text(f"alice:{os.urandom(32).hex()}\n")
    (dirs["bob"] / "keys.psk").write_text(f"bob:{os.urandom(32).hex()}\n")
    for name in ("psk", "wrongpsk", "bob"):
        (dirs[name] / "keys.psk").chmod(0o600)
    return dirs


def test_bad_certificate_directories_refuse_the_start(tmp_path, pki):
    err = start_error(tls_config(tmp_path, tls_certificates=str(tmp_path / "none")))
    assert err.key == "nbd.tls_certificates" and "is not a directory" in str(err)
    err = start_error(tls_config(tmp_path, tls_certificates=str(pki["client"])))
    assert err.key == "nbd.tls_certificates" and "server-cert.pem" in str(err)
    broken = tmp_path / "broken"
    shutil.copytree(pki["server"], broken)
    (broken / "server-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    err = start_error(tls_config(tmp_path, tls_certificates=str(broken)))
    assert err.key == "nbd.tls_certificates" and "not a usable" in str(err)
    shutil.copy(pki["client"] / "client-key.pem", broken / "server-key.pem")  # wrong key
    shutil.copy(pki["server"] / "server-cert.pem", broken / "server-cert.pem")
    for psk in (None, str(pki["psk"] / "keys.psk")):  # the stdlib and the pyOpenSSL loaders
        err = start_error(tls_config(tmp_path, tls_certificates=str(broken), tls_psk_file=psk))
        assert err.key == "nbd.tls_certificates" and "not" in str(err) and "usable" in str(err)


# -- real clients --------------------------------------------------------------------------------

SIZE = 16 << 20


def run(*argv: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout,
                          **kw)  # fmt: skip


@contextlib.contextmanager
def tls_daemon(tmp_path: Path, **nbd: Any) -> Iterator[EmbeddedDaemon]:
    """A daemon with export ``ioband1`` on a unix socket and on TCP 127.0.0.1 (a free port)."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(SIZE)
    config = load_config({
        "nbd": {"unix_socket": str(tmp_path / "nbd.sock"), "tcp": "127.0.0.1:0", **nbd},
        "device": [{"name": "ioband1",
                    "table": f"0 {SIZE // 512} ioband {image} 1 0 0 none weight 0 :40"}],
    })  # fmt: skip
    with EmbeddedDaemon(config) as d:
        d.port = d.daemon.nbd.tcp_port
        d.image = image
        d.sock = str(tmp_path / "nbd.sock")
        yield d


def x509(pki: dict[str, Path], name: str = "client") -> list[str]:
    return ["--object", f"tls-creds-x509,id=tls0,dir={pki[name]},endpoint=client"]


def psk(pki: dict[str, Path], name: str = "psk", user: str = "alice") -> list[str]:
    return ["--object", f"tls-creds-psk,id=tls0,dir={pki[name]},username={user},endpoint=client"]


def qemu_opts(d: EmbeddedDaemon, tls: bool = True) -> str:
    return f"driver=nbd,host=127.0.0.1,port={d.port},export=ioband1" + (
        ",tls-creds=tls0" if tls else "")  # fmt: skip


def qemu_json(d: EmbeddedDaemon) -> str:
    return "json:" + json.dumps({"driver": "nbd", "export": "ioband1", "tls-creds": "tls0",
                                 "server": {"type": "inet", "host": "127.0.0.1",
                                            "port": str(d.port)}})  # fmt: skip


def nbds(d: EmbeddedDaemon, query: str, user: str = "") -> str:
    return f"nbds://{user + '@' if user else ''}127.0.0.1:{d.port}/ioband1?{query}"


def round_trip(d: EmbeddedDaemon, tmp_path: Path, creds: list[str]) -> None:
    """qemu-img convert writes random data over TLS, reads it back over TLS; the backing
    file holds the same bytes."""
    need("qemu-img")
    src = tmp_path / "src.raw"
    data = os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(1 << 20)
    src.write_bytes(data)
    run("qemu-img", "convert", "-n", *creds, "-f", "raw", "--target-image-opts", str(src),
        qemu_opts(d))  # fmt: skip
    out = tmp_path / "out.raw"
    run("qemu-img", "convert", *creds, "--image-opts", qemu_opts(d), "-O", "raw", str(out))
    back = out.read_bytes()
    assert back[: len(data)] == data and back[len(data) :] == bytes(SIZE - len(data))
    assert d.image.read_bytes()[: len(data)] == data


@pytest.fixture(params=["uvloop", "asyncio"])
def event_loop_kind(request, monkeypatch) -> str:
    monkeypatch.setenv("IOBAND_EVENT_LOOP", request.param)
    return request.param


def test_x509_qemu_img_and_nbdinfo(tmp_path, pki, event_loop_kind):
    need("nbdinfo")
    with tls_daemon(tmp_path, tls="require", tls_certificates=str(pki["server"])) as d:
        info = json.loads(run("qemu-img", "info", "--output=json", *x509(pki),
                              qemu_json(d)).stdout)  # fmt: skip
        assert info["virtual-size"] == SIZE
        out = run("nbdinfo", "--json", nbds(d, f"tls-certificates={pki['client']}")).stdout
        export = json.loads(out)
        assert export["TLS"] is True and export["exports"][0]["export-size"] == SIZE
        round_trip(d, tmp_path, x509(pki))


def test_psk_qemu_img_nbdinfo_and_nbdcopy(tmp_path, pki, event_loop_kind, caplog):
    need("nbdinfo")
    need("nbdcopy")
    keys = pki["psk"] / "keys.psk"
    with (
        caplog.at_level(logging.INFO, "ioband.nbd"),
        tls_daemon(tmp_path, tls="require", tls_psk_file=str(keys)) as d,
    ):
        info = json.loads(run("qemu-img", "info", "--output=json", *psk(pki), qemu_json(d)).stdout)
        assert info["virtual-size"] == SIZE
        uri = nbds(d, f"tls-psk-file={keys}", user="alice")
        export = json.loads(run("nbdinfo", "--json", uri).stdout)
        assert export["TLS"] is True and export["exports"][0]["export-size"] == SIZE
        round_trip(d, tmp_path, psk(pki))
        src = tmp_path / "copy.raw"
        src.write_bytes(os.urandom(SIZE))
        run("nbdcopy", str(src), uri)
        out = tmp_path / "copy-back.raw"
        run("nbdcopy", uri, str(out))
        assert out.read_bytes() == src.read_bytes()
    assert "PSK user 'alice', TLSv1.3" in caplog.text


def test_psk_over_tls_1_2(tmp_path, pki):
    """gnutls clients limited to TLS 1.2 get a PSK suite (and TLS 1.1 is refused)."""
    need("qemu-img")
    keys = pki["psk"] / "keys.psk"
    dir_ = pki["psk"]
    with tls_daemon(tmp_path, tls="require", tls_psk_file=str(keys),
                    tls_certificates=str(pki["server"])) as d:  # fmt: skip
        for priority, ok in (("NORMAL:-VERS-TLS1.3", True),
                             ("NORMAL:-VERS-TLS1.3:-VERS-TLS1.2", False)):  # fmt: skip
            obj = (f"tls-creds-psk,id=tls0,dir={dir_},username=alice,endpoint=client,"
                   f"priority={priority}")  # fmt: skip
            result = run("qemu-img", "info", "--object", obj, qemu_json(d), check=False)
            assert (result.returncode == 0) is ok, result.stderr


def test_plain_clients_refused_when_tls_is_required(tmp_path, pki):
    need("nbdinfo")
    with tls_daemon(tmp_path, tls="require", tls_certificates=str(pki["server"])) as d:
        result = run("nbdinfo", f"nbd://127.0.0.1:{d.port}/ioband1", check=False,
                     env=dict(os.environ, LIBNBD_DEBUG="1"))  # fmt: skip
        assert result.returncode != 0
        assert "without TLS" in result.stdout  # libnbd 1.14 says "Operation not supported"
        assert "TLS is required, send NBD_OPT_STARTTLS first" in result.stderr  # the reason
        src = tmp_path / "src.raw"
        src.write_bytes(b"\xab" * (1 << 20))
        result = run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src),
                     f"nbd://127.0.0.1:{d.port}/ioband1", check=False)  # fmt: skip
        assert result.returncode != 0
        assert "TLS negotiation required" in result.stderr
        result = run("qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 64k",
                     f"nbd://127.0.0.1:{d.port}/ioband1", check=False)  # fmt: skip
        assert result.returncode != 0 and "TLS" in result.stderr
        # a client that skips negotiation (NBD_OPT_EXPORT_NAME) is cut off
        with socket.create_connection(("127.0.0.1", d.port)) as s:
            s.recv(18)
            s.sendall(struct.pack(">I", 3) + opt(EXPORT_NAME, b"ioband1"))
            s.settimeout(10)
            assert s.recv(100) == b""
        assert d.image.read_bytes() == bytes(SIZE)  # nothing written


def test_wrong_credentials_are_refused(tmp_path, pki, caplog):
    need("nbdinfo")
    keys = pki["psk"] / "keys.psk"
    with (
        caplog.at_level(logging.INFO, "ioband.nbd"),
        tls_daemon(
            tmp_path, tls="require", tls_psk_file=str(keys), tls_certificates=str(pki["server"])
        ) as d,
    ):
        for uri in (nbds(d, f"tls-psk-file={pki['wrongpsk'] / 'keys.psk'}", user="alice"),
                    nbds(d, f"tls-psk-file={pki['bob'] / 'keys.psk'}", user="bob")):  # fmt: skip
            result = run("nbdinfo", uri, check=False)
            assert result.returncode != 0 and "gnutls_handshake" in result.stderr
        result = run("qemu-img", "info", *psk(pki, "wrongpsk"), qemu_json(d), check=False)
        assert result.returncode != 0 and "TLS handshake failed" in result.stderr
        # the client does not trust the server's CA
        result = run("nbdinfo", nbds(d, f"tls-certificates={pki['untrusted']}"), check=False)
        assert result.returncode != 0 and "certificate verification" in result.stderr
        result = run("qemu-img", "info", *x509(pki, "untrusted"), qemu_json(d), check=False)
        assert result.returncode != 0 and "known issuer" in result.stderr
        # the daemon goes on serving, and forgot the failed connections
        run("nbdinfo", nbds(d, f"tls-psk-file={keys}", user="alice"))
        assert d.call(lambda: len(d.daemon.connections)) == 0
    failures = [r for r in caplog.records if "handshake" in r.getMessage()]
    assert len(failures) >= 3  # one line per failed connection (the untrusted ones: maybe)
    assert all(r.exc_info is None for r in caplog.records)
    assert "binder does not verify (PSK user 'alice')" in caplog.text
    assert "PSK user 'bob', unknown" in caplog.text
    assert "Traceback" not in caplog.text


def refuses_clients_without_our_certificate(d, pki) -> None:
    """nbdinfo and qemu-img with no client certificate, and nbdinfo with one our CA did not
    sign, are all refused."""
    result = run("nbdinfo", nbds(d, f"tls-certificates={pki['nocert']}"), check=False)
    assert result.returncode != 0
    result = run("qemu-img", "info", *x509(pki, "nocert"), qemu_json(d), check=False)
    assert result.returncode != 0
    result = run("nbdinfo", nbds(d, f"tls-certificates={pki['stranger']}"), check=False)
    assert result.returncode != 0


def test_verify_peer_requires_a_client_certificate(tmp_path, pki, caplog):
    need("nbdinfo")
    with (
        caplog.at_level(logging.INFO, "ioband.nbd"),
        tls_daemon(
            tmp_path, tls="require", tls_certificates=str(pki["server"]), tls_verify_peer=True
        ) as d,
    ):
        refuses_clients_without_our_certificate(d, pki)
        run("nbdinfo", nbds(d, f"tls-certificates={pki['client']}"))
        run("qemu-img", "info", *x509(pki), qemu_json(d))
    assert "certificate CN=client1" in caplog.text
    assert caplog.text.count("failed: peer did not return a certificate") == 2


def test_verify_peer_with_psk_too_requires_a_psk_or_a_client_certificate(tmp_path, pki, caplog):
    """The PSK path can only ask for a certificate (PSK clients have none): a client with
    neither is refused all the same."""
    need("nbdinfo")
    keys = pki["psk"] / "keys.psk"
    with caplog.at_level(logging.INFO, "ioband.nbd"), tls_daemon(
        tmp_path, tls="require", tls_certificates=str(pki["server"]), tls_psk_file=str(keys),
        tls_verify_peer=True,
    ) as d:  # fmt: skip
        refuses_clients_without_our_certificate(d, pki)
        result = run("nbdinfo", nbds(d, f"tls-certificates={pki['untrusted']}"), check=False)
        assert result.returncode != 0
        run("nbdinfo", nbds(d, f"tls-certificates={pki['client']}"))
        run("nbdinfo", nbds(d, f"tls-psk-file={keys}", user="alice"))
        run("qemu-img", "info", *psk(pki), qemu_json(d))
    assert caplog.text.count("failed: peer did not return a certificate") == 2
    assert "certificate CN=client1" in caplog.text
    assert caplog.text.count("PSK user 'alice', TLS") == 2


def test_tls_on_serves_plain_and_tls_clients(tmp_path, pki):
    need("nbdinfo")
    keys = pki["psk"] / "keys.psk"
    with tls_daemon(tmp_path, tls="on", tls_psk_file=str(keys)) as d:
        plain = json.loads(run("nbdinfo", "--json", f"nbd://127.0.0.1:{d.port}/ioband1").stdout)
        assert plain["TLS"] is False
        secure = json.loads(run("nbdinfo", "--json", nbds(d, f"tls-psk-file={keys}",
                                                          user="alice")).stdout)  # fmt: skip
        assert secure["TLS"] is True
        run("qemu-img", "info", f"nbd://127.0.0.1:{d.port}/ioband1")
        run("qemu-img", "info", *psk(pki), qemu_json(d))


def test_unix_socket_offers_tls_but_never_requires_it(tmp_path, pki):
    need("nbdinfo")
    keys = pki["psk"] / "keys.psk"
    with tls_daemon(tmp_path, tls="require", tls_psk_file=str(keys)) as d:
        plain = json.loads(run("nbdinfo", "--json", f"nbd+unix:///ioband1?socket={d.sock}").stdout)
        assert plain["TLS"] is False
        uri = f"nbds+unix://alice@/ioband1?socket={d.sock}&tls-psk-file={keys}"
        assert json.loads(run("nbdinfo", "--json", uri).stdout)["TLS"] is True


def _starttls(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    s.recv(18)
    s.sendall(struct.pack(">I", 3) + opt(STARTTLS))
    assert s.recv(20) == rep(STARTTLS, ACK)
    return s


@pytest.mark.parametrize("creds", ["x509", "psk"])
def test_bad_handshakes_close_only_their_connection(tmp_path, pki, caplog, monkeypatch, creds):
    need("nbdinfo")
    monkeypatch.setattr(nbdtls, "HANDSHAKE_TIMEOUT", 0.5)
    keys = pki["psk"] / "keys.psk"
    nbd = ({"tls_certificates": str(pki["server"])} if creds == "x509"
           else {"tls_psk_file": str(keys)})  # fmt: skip
    good = (f"tls-certificates={pki['client']}" if creds == "x509"
            else f"tls-psk-file={keys}")  # fmt: skip
    with (
        caplog.at_level(logging.INFO, "ioband.nbd"),
        tls_daemon(tmp_path, tls="require", **nbd) as d,
    ):
        s = _starttls(d.port)  # garbage instead of a ClientHello
        s.sendall(b"\x16\x03\x01\x00\x05hello" + b"x" * 100)
        with contextlib.suppress(ConnectionError):
            while s.recv(1000):  # an alert, then the end
                pass
        s.close()
        s = _starttls(d.port)  # silence: the handshake times out
        t0 = time.monotonic()
        with contextlib.suppress(ConnectionError):
            assert s.recv(1000) == b""
        assert time.monotonic() - t0 < 5
        s.close()
        s = _starttls(d.port)  # gone in the middle
        s.close()
        run("nbdinfo", nbds(d, good, user="alice" if creds == "psk" else ""))
        deadline = time.monotonic() + 5
        while d.call(lambda: len(d.daemon.connections)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.call(lambda: len(d.daemon.connections)) == 0
    failures = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(failures) == 3, failures
    assert any("timed out" in m for m in failures)
    assert all(r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text
