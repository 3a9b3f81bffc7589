"""TLS for the NBD server: credentials laid out as qemu and nbdkit lay them out, and the upgrade
of one connection after the codec's :class:`~ioband.nbd.protocol.StartTls` event.

Two kinds of credentials, which may be given together:

* X.509: a directory with ``ca-cert.pem``, ``server-cert.pem`` and ``server-key.pem``, as
  qemu's ``tls-creds-x509,dir=`` and nbdkit's ``--tls-certificates``; with ``verify_peer`` the
  client must present a certificate signed by that CA.
* PSK: a file of ``username:hexkey`` lines, as nbdkit's ``--tls-psk`` and the ``keys.psk`` of
  qemu's ``tls-creds-psk``.

Python 3.11's :mod:`ssl` has no PSK (it came in 3.13), so a PSK server runs OpenSSL through
pyOpenSSL and the ``cryptography`` bindings, sans-I/O over memory BIOs: :class:`TlsLayer` sits
between the socket's transport and the NBD connection, encrypting what the connection writes
and decrypting what it reads. X.509 alone goes through the event loop's own ``start_tls`` (stdlib
:mod:`ssl`, uvloop's or asyncio's), the code path every asyncio TLS server uses; with a PSK file
too, one OpenSSL context serves both kinds of client, so certificates go through the layer then.
``benchmarks/nbd_tls.py`` compares the two paths and plain TCP.

Loading is done once, when the server starts; a file that cannot be read or parsed refuses the
start with a :class:`~ioband.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import stat
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ioband.errors import ConfigError

log = logging.getLogger("ioband.nbd")

CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
HANDSHAKE_TIMEOUT = 30.0  # seconds a client has to finish the TLS handshake
_CHUNK = 1 << 22  # ciphertext taken from OpenSSL's memory BIO at a time (a 1 MiB READ: once)
_READ_BUFFER = 1 << 20  # plaintext decrypted into one buffer before it goes to the connection
# TLS 1.2 suites for PSK clients (TLS 1.3 needs none: it uses TLS_AES_128_GCM_SHA256) and for
# certificates; forward secrecy first.
_TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
_CIPHERS = b"ECDHE-PSK:DHE-PSK:ECDHE+AESGCM:ECDHE+CHACHA20:PSK:!aNULL:!eNULL:!MD5:!3DES:!RC4"


@dataclass
class TlsCredentials:
    """What the server hands to the TLS handshake of every connection that asks for TLS.

    ``ssl_context`` (stdlib) is set when only certificates are configured; ``openssl_context``
    (pyOpenSSL) when a PSK file is, possibly with certificates as well."""

    certificates: str | None = None
    psk_users: frozenset[str] = frozenset()
    verify_peer: bool = False
    ssl_context: ssl.SSLContext | None = None
    openssl_context: Any = None
    _keepalive: list[Any] = field(default_factory=list)  # cffi callbacks must outlive the ctx

    def describe(self) -> str:
        kinds = []
        if self.certificates:
            kinds.append(
                f"X.509 from {self.certificates}"
                + (" (client certificates required)" if self.verify_peer else "")
            )
        if self.psk_users:
            kinds.append(f"PSK for {len(self.psk_users)} user(s)")
        return ", ".join(kinds)


# -- loading -------------------------------------------------------------------------------------


def read_psk_file(path: str, source: str = "<config>") -> dict[str, bytes]:
    """``username:hexkey`` lines (blank lines and ``#`` comments allowed) → {username: key}.

    The format of nbdkit's ``--tls-psk`` and qemu's ``keys.psk`` (psktool writes it)."""
    key = "nbd.tls_psk_file"
    try:
        with open(path, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(source, key, f"cannot read {path!r}: {why}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(source, key, f"{path!r} is not a regular file")
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hexkey = line.rpartition(":")
        where = f"{path}: line {number}"
        if not sep or not user:
            raise ConfigError(source, key, f"{where}: expected 'username:hexkey'")
        if user in keys:
            raise ConfigError(source, key, f"{where}: user {user!r} given twice")
        try:
            secret = bytes.fromhex(hexkey)
        except ValueError:
            raise ConfigError(source, key, f"{where}: the key is not hexadecimal") from None
        if not 1 <= len(secret) <= 256:  # OpenSSL's PSK_MAX_PSK_LEN
            raise ConfigError(source, key, f"{where}: the key must be 1..256 bytes")
        keys[user] = secret
    if not keys:
        raise ConfigError(source, key, f"{path!r} has no 'username:hexkey' line")
    if st.st_mode & 0o077:
        log.warning("%s: PSK file %s can be read by others (mode %o): chmod 600 it", source,
                    path, stat.S_IMODE(st.st_mode))  # fmt: skip
    return keys


def _x509_paths(directory: str, source: str) -> tuple[str, str, str]:
    key = "nbd.tls_certificates"
    if not os.path.isdir(directory):
        raise ConfigError(source, key, f"{directory!r} is not a directory")
    paths = tuple(os.path.join(directory, name) for name in (CA_CERT, SERVER_CERT, SERVER_KEY))
    for path in paths:
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise ConfigError(source, key, f"cannot read {path!r}: {err.strerror} (the"
                              f" directory needs {CA_CERT}, {SERVER_CERT} and {SERVER_KEY})"
                              ) from None  # fmt: skip
    return paths  # type: ignore[return-value]


def _stdlib_context(directory: str, verify_peer: bool, source: str) -> ssl.SSLContext:
    ca, cert, key = _x509_paths(directory, source)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.2 at least, as the NBD spec asks
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(source, "nbd.tls_certificates", f"{cert} / {key}: not a usable"
                          f" certificate and matching private key: {err}") from None  # fmt: skip
    try:
        ctx.load_verify_locations(ca)
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(source, "nbd.tls_certificates",
                          f"{ca}: not a PEM CA certificate: {err}") from None  # fmt: skip
    ctx.verify_mode = ssl.CERT_REQUIRED if verify_peer else ssl.CERT_NONE
    return ctx


def _openssl_context(
    directory: str | None, verify_peer: bool, keys: dict[str, bytes], source: str,
    keepalive: list[Any],
) -> Any:  # fmt: skip
    """A pyOpenSSL context whose PSK server callback looks users up in ``keys``."""
    try:
        from cryptography.hazmat.bindings.openssl.binding import Binding
        from OpenSSL import SSL, crypto
    except ImportError as err:
        raise ConfigError(source, "nbd.tls_psk_file",
                          f"PSK needs pyOpenSSL and cryptography: {err}") from None  # fmt: skip
    binding = Binding()
    ffi, lib = binding.ffi, binding.lib
    if not getattr(lib, "Cryptography_HAS_PSK", False):
        raise ConfigError(source, "nbd.tls_psk_file",
                          "the OpenSSL of 'cryptography' was built without PSK")  # fmt: skip
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
    ctx.set_cipher_list(_CIPHERS)
    # OpenSSL's PSK server callback gives TLS 1.3 a SHA-256 key: a session whose suite hashes
    # with SHA-384 cannot use it and falls back to the certificate, which a PSK client lacks
    # (gnutls: "Insufficient credentials"). So the SHA-256 suites come first, server's order.
    ctx.set_tls13_ciphersuites(_TLS13_SUITES)
    ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_session_id(b"ioband-nbd")  # OpenSSL refuses to verify peers without one
    if directory:
        ca, cert, key = _x509_paths(directory, source)
        try:
            ctx.use_certificate_chain_file(cert)
            ctx.use_privatekey_file(key)
            ctx.check_privatekey()
            ctx.load_verify_locations(ca)
        except (SSL.Error, crypto.Error, OSError) as err:
            raise ConfigError(source, "nbd.tls_certificates", f"{cert} / {key} / {ca}: not"
                              f" usable PEM certificates and key: {err}") from None  # fmt: skip
        if verify_peer:
            # A PSK client presents no certificate: only ask, and check what is presented;
            # TlsLayer refuses a handshake that used neither a PSK nor a client certificate.
            ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))

    @ffi.callback("unsigned int(SSL *, const char *, unsigned char *, unsigned int)")
    def psk_callback(ssl_ptr: Any, identity: Any, out: Any, max_len: int) -> int:
        """OpenSSL asks for the key of the identity the client sent: 0 refuses it."""
        try:
            user = ffi.string(identity).decode("utf-8") if identity != ffi.NULL else ""
        except UnicodeDecodeError:
            return 0
        secret = keys.get(user)
        layer = _LAYERS.get(int(ffi.cast("uintptr_t", ssl_ptr)))
        if layer is not None:
            layer.psk_identity = user
            layer.psk_known = secret is not None
        if secret is None or len(secret) > max_len:
            return 0
        ffi.memmove(out, secret, len(secret))
        return len(secret)

    lib.SSL_CTX_set_psk_server_callback(ctx._context, psk_callback)
    keepalive.append(psk_callback)
    return ctx


class TlsSettings(Protocol):
    """The ``[nbd]`` keys TLS is configured by (the daemon's ``Config`` has them), and the
    file they were read from, which errors name."""

    @property
    def source(self) -> str: ...
    @property
    def tls(self) -> str: ...
    @property
    def tls_certificates(self) -> str | None: ...
    @property
    def tls_verify_peer(self) -> bool: ...
    @property
    def tls_psk_file(self) -> str | None: ...


def load_credentials(config: TlsSettings) -> TlsCredentials | None:
    """The configured credentials, checked and loaded; None when ``tls = "off"``."""
    if config.tls == "off":
        return None
    src = config.source
    creds = TlsCredentials(certificates=config.tls_certificates,
                           verify_peer=config.tls_verify_peer)  # fmt: skip
    if config.tls_psk_file:
        keys = read_psk_file(config.tls_psk_file, src)
        creds.psk_users = frozenset(keys)
        creds.openssl_context = _openssl_context(config.tls_certificates, config.tls_verify_peer,
                                                 keys, src, creds._keepalive)  # fmt: skip
    elif config.tls_certificates:
        creds.ssl_context = _stdlib_context(config.tls_certificates, config.tls_verify_peer, src)
    return creds


# -- the upgrade ---------------------------------------------------------------------------------


class TlsHandshakeError(ConnectionError):
    """The TLS handshake after NBD_OPT_STARTTLS failed: the connection is closed."""


async def upgrade(
    transport: asyncio.BaseTransport,
    protocol: asyncio.Protocol,
    creds: TlsCredentials,
    timeout: float | None = None,
) -> asyncio.Transport:
    """Run the server side of the TLS handshake on ``transport`` (whose reading the caller
    paused right after queueing the STARTTLS ACK, so no ClientHello reaches ``protocol``);
    ``protocol`` receives the decrypted stream through the transport returned. Raises
    :class:`TlsHandshakeError` (the transport is closed then)."""
    loop = asyncio.get_running_loop()
    timeout = timeout or HANDSHAKE_TIMEOUT
    if creds.ssl_context is not None:
        try:
            tls = await loop.start_tls(transport, protocol, creds.ssl_context, server_side=True,
                                       ssl_handshake_timeout=timeout)  # fmt: skip
        except Exception as err:  # SSLError, reset, timeout: all end this connection only
            transport.close()
            raise TlsHandshakeError(_describe(err, timeout)) from None
        if tls is None:  # the peer went away during the handshake
            raise TlsHandshakeError("the client closed the connection")
        return tls  # type: ignore[return-value]
    layer = TlsLayer(loop, transport, protocol, creds.openssl_context,  # type: ignore[arg-type]
                     verify_peer=creds.verify_peer)  # fmt: skip
    return await layer.handshake(timeout)


def _describe(err: BaseException, timeout: float) -> str:
    """One line for the log, the same for both event loops and the PSK layer."""
    if isinstance(err, TimeoutError) or "taking longer than" in str(err):
        return f"timed out after {timeout:g} s"
    if isinstance(err, ssl.SSLError) and err.reason:
        return err.reason.lower().replace("_", " ")
    if isinstance(err, ConnectionResetError | BrokenPipeError | EOFError):
        return "the client closed the connection"
    return str(err) or type(err).__name__


# -- a sans-I/O TLS layer over OpenSSL memory BIOs (PSK) ------------------------------------------

_LAYERS: weakref.WeakValueDictionary[int, TlsLayer] = weakref.WeakValueDictionary()
_THREAD = threading.local()


def _read_buffer() -> tuple[bytearray, Any]:
    """The decryption buffer of this thread's event loop, and a cffi pointer to it: one for
    all connections (what is decrypted is copied out before anything else runs), not a
    megabyte per connection."""
    try:
        return _THREAD.read_buffer
    except AttributeError:
        from cryptography.hazmat.bindings.openssl.binding import Binding

        buf = bytearray(_READ_BUFFER)
        _THREAD.read_buffer = buf, Binding().ffi.from_buffer("char[]", buf)
        return _THREAD.read_buffer


class TlsLayer(asyncio.Protocol):
    """The protocol of the socket's transport and the transport of the NBD connection.

    Bytes from the socket go into OpenSSL's read BIO; what OpenSSL decrypts goes to the
    connection's ``data_received``. What the connection writes is encrypted at once (so the
    caller's buffer is free when ``write`` returns, as with a plain transport) and the
    ciphertext goes to the socket. Flow control is the socket transport's, passed through."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        raw: asyncio.Transport,
        app: asyncio.Protocol,
        context: Any,
        *,
        verify_peer: bool = False,
    ) -> None:
        from cryptography.hazmat.bindings.openssl.binding import Binding
        from OpenSSL import SSL

        self._SSL = SSL
        self._loop = loop
        self._raw = raw
        self._app = app
        self._conn = SSL.Connection(context, None)
        self._conn.set_accept_state()
        binding = Binding()
        ffi = binding.ffi
        self._lib = binding.lib
        _LAYERS[int(ffi.cast("uintptr_t", self._conn._ssl))] = self
        self._waiter: asyncio.Future[TlsLayer] = loop.create_future()
        self._handshaken = False
        self._verify_peer = verify_peer
        self._closing = False
        self._app_lost = False
        self.psk_identity: str | None = None  # what the client sent (known or not)
        self.psk_known = False

    async def handshake(self, timeout: float) -> TlsLayer:
        raw = self._raw
        raw.set_protocol(self)
        raw.resume_reading()
        try:
            return await asyncio.wait_for(self._waiter, timeout)
        except TimeoutError:
            raw.abort()
            raise TlsHandshakeError(_describe(TimeoutError(), timeout)) from None
        except TlsHandshakeError:
            raw.close()
            raise

    # -- the socket side ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover
        pass

    def data_received(self, data: bytes) -> None:
        SSL = self._SSL
        conn = self._conn
        conn.bio_write(data)
        if not self._handshaken:
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error as err:
                self._flush()  # the alert, so that the client can say why
                self._fail(TlsHandshakeError(_openssl_reason(err)))
                return
            self._flush()
            if self._verify_peer and not self.psk_known and conn.get_peer_certificate() is None:
                # OpenSSL only asked for a certificate (a PSK client has none): the client
                # proved nothing, so it is refused here as the stdlib's CERT_REQUIRED would.
                self._raw.close()
                self._fail(TlsHandshakeError("peer did not return a certificate"))
                return
            self._handshaken = True
            if not self._waiter.done():
                self._waiter.set_result(self)
        self._decrypt()
        self._flush()  # TLS 1.3 session tickets and key updates

    def _decrypt(self) -> None:
        """Everything OpenSSL can decrypt now goes to the connection in one ``data_received``
        per buffer-full (as uvloop does): SSL_read fills our buffer directly (pyOpenSSL's
        ``recv`` copies each record twice), and the codec then gets one large chunk of which
        WRITE payloads are views, instead of assembling them from 16 KiB records."""
        SSL = self._SSL
        conn = self._conn
        ssl_ptr = conn._ssl
        ssl_read = self._lib.SSL_read
        buf, ptr = _read_buffer()
        size = len(buf)
        while not self._closing:
            n = 0
            end: Exception | None = None
            while n < size:
                result = ssl_read(ssl_ptr, ptr + n, size - n)
                if result > 0:
                    n += result
                    continue
                try:
                    conn._raise_ssl_error(ssl_ptr, result)
                except SSL.WantReadError:
                    pass
                except SSL.Error as err:  # ZeroReturnError (close_notify) included
                    end = err
                break
            if n:
                self._app.data_received(bytes(memoryview(buf)[:n]))
            if end is not None:
                if isinstance(end, SSL.ZeroReturnError):  # the client's end of stream
                    if not self._app.eof_received():
                        self.close()
                else:
                    log.info("NBD TLS error from %s: %s", self.get_extra_info("peername"),
                             _openssl_reason(end))  # fmt: skip
                    self._flush()
                    self._raw.close()
                return
            if n < size:
                return

    def eof_received(self) -> bool | None:
        if not self._handshaken:
            self._fail(TlsHandshakeError("the client closed the connection"))
            return None
        return self._app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._handshaken:
            self._fail(
                TlsHandshakeError(_describe(exc, 0) if exc else "the client closed the connection")
            )
            return
        if not self._app_lost:
            self._app_lost = True
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    def _fail(self, err: TlsHandshakeError) -> None:
        if self.psk_identity is not None:
            known = "" if self.psk_known else ", unknown"
            err = TlsHandshakeError(f"{err} (PSK user {self.psk_identity!r}{known})")
        if not self._waiter.done():
            self._waiter.set_exception(err)

    def _flush(self) -> None:
        SSL = self._SSL
        conn = self._conn
        out = []
        while True:
            try:
                out.append(conn.bio_read(_CHUNK))
            except SSL.WantReadError:
                break
        if out and not self._raw.is_closing():
            if len(out) == 1:
                self._raw.write(out[0])  # the stock loop's writelines joins (copies) first
            else:
                self._raw.writelines(out)

    # -- the transport the NBD connection sees -------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._conn.sendall(data)
        self._flush()

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        if self._closing:
            return
        conn = self._conn
        for data in chunks:
            if data:
                conn.sendall(data)
        self._flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(self._SSL.Error):
            self._conn.shutdown()  # close_notify
        self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "psk_identity":
            return self.psk_identity
        if name == "tls_version":
            return self._conn.get_protocol_version_name()
        if name == "cipher":
            return self._conn.get_cipher_name()
        if name == "peercert_der":
            cert = self._conn.get_peer_certificate()
            if cert is None:
                return None
            from OpenSSL import crypto

            return crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        return self._raw.get_extra_info(name, default)


def _openssl_reason(err: Exception) -> str:
    """A one-line reason from a pyOpenSSL error (its args hold a list of OpenSSL tuples)."""
    parts = []
    for arg in getattr(err, "args", ()):
        if isinstance(arg, list):
            parts += [str(item[-1]) for item in arg if isinstance(item, tuple) and item]
    return "; ".join(parts) or str(err) or type(err).__name__


def peer_description(transport: asyncio.BaseTransport) -> str:
    """Who the client proved to be (PSK user, certificate subject) and the protocol, for the
    log line."""
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is not None:
        version, cipher = sslobj.version(), (sslobj.cipher() or ("?",))[0]
        der = sslobj.getpeercert(binary_form=True)
    else:
        version = transport.get_extra_info("tls_version")
        cipher = transport.get_extra_info("cipher")
        der = transport.get_extra_info("peercert_der")
    identity = transport.get_extra_info("psk_identity")
    if identity:
        who = f"PSK user {identity!r}"
    elif der:
        from cryptography import x509

        who = f"certificate {x509.load_der_x509_certificate(der).subject.rfc4514_string()}"
    else:
        who = "no client certificate"
    return f"{who}, {version} {cipher}"
