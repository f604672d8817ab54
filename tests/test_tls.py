"""TLS on the WebSocket port (`[server] tls_cert_file` / `tls_key_file`): the real SDK over wss://,
protocol versions, clients that cannot speak TLS, certificate reload, and configuration errors.

Certificates come from a throwaway CA made by `trustme`; clients trust it explicitly, so nothing
here depends on the machine's trust store.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from centrifuge import Client, PublicationContext, SubscriptionEventHandler
from conftest import get_text, make_config, running_server, serve_in, token
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from trio_websocket import open_websocket_url

from aether_trio.app import Server
from aether_trio.config import ConfigError, load_config
from aether_trio.transport import tls

WAIT = 5.0
PATH = "/connection/websocket"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_cert(ca: trustme.CA, directory: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 issued by `ca`: (chain file, key file) in `directory`."""
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    return write_cert(ca, tmp_path)


def tls_config(cert: Path, key: Path, **server: Any) -> Any:
    return make_config({"server": {"tls_cert_file": str(cert), "tls_key_file": str(key), **server}})


def client_context(
    ca: trustme.CA, version: ssl.TLSVersion | None = None, *, ciphers: str = ""
) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def wss_url(server: Server) -> str:
    return f"wss://127.0.0.1:{server.port}{PATH}"


async def wss_connect_reply(server: Server, context: ssl.SSLContext) -> str:
    """Open a wss:// WebSocket trusting `context`, send `connect`, return the reply frame."""
    with trio.fail_after(WAIT):
        async with open_websocket_url(wss_url(server), ssl_context=context) as ws:
            await ws.send_message(f'{{"id":1,"connect":{{"token":"{token("42")}"}}}}')
            return await get_text(ws)


async def tls_handshake(server: Server, context: ssl.SSLContext) -> str:
    """Complete a TLS handshake with the server (no WebSocket); return the TLS version. (For the
    failures: trio-websocket's client waits out its 60 s timeout when a handshake fails.)"""
    with trio.fail_after(WAIT):
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", server.port, ssl_context=context)
        try:
            await stream.do_handshake()
            version: str = stream.version()
            return version
        finally:
            await trio.aclose_forcefully(stream)


# --- the SDK over wss:// ---


class Publications(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.received: asyncio.Queue[Any] = asyncio.Queue()

    async def on_publication(self, ctx: PublicationContext) -> None:
        await self.received.put(ctx.pub.data)


def test_centrifuge_python_over_wss_subscribes_and_receives(
    ca: trustme.CA, cert_files: tuple[Path, Path]
) -> None:
    with running_server(tls_config(*cert_files)) as running:
        url = f"wss://127.0.0.1:{running.server.port}{PATH}"

        async def scenario() -> Any:
            async with asyncio.timeout(4 * WAIT):
                return await subscribe_and_publish()

        async def subscribe_and_publish() -> Any:
            client = Client(url, token=token("42"), ssl_context=client_context(ca), proxy=None)
            events = Publications()
            try:
                await client.connect()
                await client.ready(timeout=WAIT)
                sub = client.new_subscription("news", events=events)
                await sub.subscribe()
                await sub.ready(timeout=WAIT)
                await sub.publish({"text": "over tls"})
                return await asyncio.wait_for(events.received.get(), WAIT)
            finally:
                await client.disconnect()
                # Let the SDK finish its close handshake and background tasks.
                current = asyncio.current_task()
                pending = [task for task in asyncio.all_tasks() if task is not current]
                if pending:
                    await asyncio.wait(pending, timeout=2.0)

        assert asyncio.run(scenario()) == {"text": "over tls"}


# --- protocol versions ---


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
    ids=["tls1.2", "tls1.3"],
)
async def test_tls_1_2_and_1_3_are_served_without_compression(
    nursery: trio.Nursery,
    ca: trustme.CA,
    cert_files: tuple[Path, Path],
    version: ssl.TLSVersion,
    name: str,
) -> None:
    server = await serve_in(nursery, tls_config(*cert_files))
    context = client_context(ca, version)
    context.set_alpn_protocols(["http/1.1"])
    with trio.fail_after(WAIT):
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", server.port, ssl_context=context)
        await stream.do_handshake()
        assert stream.version() == name
        assert stream.compression() is None
        assert stream.selected_alpn_protocol() == "http/1.1"
        await stream.aclose()
    assert '"connect"' in await wss_connect_reply(server, context)


async def test_tls_1_1_client_is_refused(
    nursery: trio.Nursery,
    ca: trustme.CA,
    cert_files: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aether_trio.transport.listener")
    server = await serve_in(nursery, tls_config(*cert_files))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 itself
        # Security level 0 lets this OpenSSL offer TLS 1.1 at all: the refusal must be the server's.
        context = client_context(ca, ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    with pytest.raises(trio.BrokenResourceError) as info:
        await tls_handshake(server, context)
    cause = info.value.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason == "NO_PROTOCOLS_AVAILABLE":
        pytest.fail("this OpenSSL build cannot offer TLS 1.1, so the refusal cannot be tested")
    assert "failed: UNSUPPORTED_PROTOCOL" in caplog.text
    assert '"connect"' in await wss_connect_reply(server, client_context(ca))


# --- clients that do not speak TLS ---


async def _closed_without_a_byte(port: int, send: bytes) -> float:
    """Connect over plain TCP, send `send`; return how long the server took to close on us (it
    must send nothing: no HTTP answer, no TLS record for a plain-text peer)."""
    started = trio.current_time()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(send)
        with trio.fail_after(WAIT):
            assert await stream.receive_some() == b""
    finally:
        await stream.aclose()
    return trio.current_time() - started


async def test_plain_ws_client_on_the_tls_port_is_dropped_at_once(
    nursery: trio.Nursery,
    ca: trustme.CA,
    cert_files: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aether_trio")
    server = await serve_in(nursery, tls_config(*cert_files, handshake_timeout=30.0))
    upgrade = (
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    # Not after the 30 s handshake timeout: as soon as the first bytes are not TLS.
    assert await _closed_without_a_byte(server.port, upgrade) < 2.0
    assert "failed: HTTP_REQUEST" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # The server keeps serving wss://.
    assert '"connect"' in await wss_connect_reply(server, client_context(ca))
    assert server.node.clients == {}


async def test_silent_peer_on_the_tls_port_is_dropped_after_the_handshake_timeout(
    nursery: trio.Nursery, ca: trustme.CA, cert_files: tuple[Path, Path]
) -> None:
    server = await serve_in(nursery, tls_config(*cert_files, handshake_timeout=0.3))
    assert 0.2 < await _closed_without_a_byte(server.port, b"") < 2.0
    assert '"connect"' in await wss_connect_reply(server, client_context(ca))


# --- certificate reload (SIGHUP) ---


async def test_sighup_reloads_the_certificate(nursery: trio.Nursery, tmp_path: Path) -> None:
    first_ca, second_ca = trustme.CA(), trustme.CA()
    write_cert(first_ca, tmp_path)
    config_path = tmp_path / "aether.toml"
    data_dir = tmp_path / "data"
    config_path.write_text(
        f'[server]\nport = 0\ntls_cert_file = "cert.pem"\ntls_key_file = "key.pem"\n'
        f'[http]\nenabled = false\n[admin]\ndata_dir = "{data_dir}"\n'
        f'[token]\nhmac_secret = "{make_config().token.hmac_secret}"\n'
    )
    server: Server = await nursery.start(Server(load_config(config_path), str(config_path)).run)
    assert '"connect"' in await wss_connect_reply(server, client_context(first_ca))

    with trio.fail_after(WAIT):
        async with open_websocket_url(wss_url(server), ssl_context=client_context(first_ca)) as ws:
            # A renewal: new files at the same paths, then SIGHUP.
            write_cert(second_ca, tmp_path)
            assert server.reload()
            # The connection made before the reload goes on.
            await ws.send_message(f'{{"id":1,"connect":{{"token":"{token("42")}"}}}}')
            assert '"connect"' in await ws.get_message()
    assert '"connect"' in await wss_connect_reply(server, client_context(second_ca))
    with pytest.raises(trio.BrokenResourceError) as info:
        await tls_handshake(server, client_context(first_ca))  # the old certificate is gone
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)

    # A broken renewal is rejected and the running certificate stays.
    (tmp_path / "key.pem").write_text("not a key\n")
    assert not server.reload()
    assert '"connect"' in await wss_connect_reply(server, client_context(second_ca))


# --- configuration ---


def test_server_context_settings(cert_files: tuple[Path, Path]) -> None:
    context = tls.server_context(*map(str, cert_files))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates asked for


def test_tls_paths_are_relative_to_the_config_file(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "aether"
    (conf_dir / "tls").mkdir(parents=True)
    write_cert(ca, conf_dir / "tls")
    path = conf_dir / "config.toml"
    path.write_text('[server]\ntls_cert_file = "tls/cert.pem"\ntls_key_file = "tls/key.pem"\n')
    monkeypatch.chdir(tmp_path)  # where "tls/..." does not exist
    server = load_config(path).server
    assert server.tls
    assert server.tls_cert_file == str(conf_dir / "tls" / "cert.pem")
    assert server.tls_key_file == str(conf_dir / "tls" / "key.pem")


@pytest.fixture
def bad_files(ca: trustme.CA, tmp_path: Path) -> Path:
    """tmp_path with cert.pem/key.pem (a good pair) and the broken variants the cases use."""
    write_cert(ca, tmp_path)
    other = ca.issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    key = load_pem_private_key((tmp_path / "key.pem").read_bytes(), password=None)
    encrypted = key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"passphrase")
    )
    (tmp_path / "encrypted-key.pem").write_bytes(encrypted)
    (tmp_path / "garbage.pem").write_text("hello\n")
    return tmp_path


@pytest.mark.parametrize(
    ("server", "key_path", "words"),
    [
        pytest.param(
            {"tls_cert_file": "missing.pem", "tls_key_file": "key.pem"},
            "server.tls_cert_file",
            ["cannot read", "missing.pem"],
            id="missing-cert",
        ),
        pytest.param(
            {"tls_cert_file": "cert.pem", "tls_key_file": "missing.pem"},
            "server.tls_key_file",
            ["cannot read", "missing.pem"],
            id="missing-key",
        ),
        pytest.param(
            {"tls_cert_file": "cert.pem"}, "server.tls_key_file", ["both"], id="only-cert"
        ),
        pytest.param({"tls_key_file": "key.pem"}, "server.tls_cert_file", ["both"], id="only-key"),
        pytest.param(
            {"tls_cert_file": "cert.pem", "tls_key_file": "other-key.pem"},
            "server.tls_key_file",
            ["does not match", "other-key.pem"],
            id="mismatched-key",
        ),
        pytest.param(
            {"tls_cert_file": "garbage.pem", "tls_key_file": "key.pem"},
            "server.tls_cert_file",
            ["no PEM certificate", "garbage.pem"],
            id="cert-not-pem",
        ),
        pytest.param(
            {"tls_cert_file": "cert.pem", "tls_key_file": "garbage.pem"},
            "server.tls_key_file",
            ["no PEM private key", "garbage.pem"],
            id="key-not-pem",
        ),
        pytest.param(
            {"tls_cert_file": "cert.pem", "tls_key_file": "encrypted-key.pem"},
            "server.tls_key_file",
            ["encrypted"],
            id="encrypted-key",
        ),
        pytest.param(
            {"tls_cert_file": "key.pem", "tls_key_file": "cert.pem"},
            "server.tls_cert_file",
            ["no PEM certificate"],
            id="swapped",
        ),
    ],
)
def test_bad_tls_files_are_config_errors_naming_the_key(
    bad_files: Path, server: dict[str, str], key_path: str, words: list[str]
) -> None:
    path = bad_files / "config.toml"
    path.write_text("[server]\n" + "".join(f'{k} = "{v}"\n' for k, v in server.items()))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{key_path}: " in message, message
    assert all(word in message for word in words), message


def test_files_gone_by_server_start_are_a_config_error(cert_files: tuple[Path, Path]) -> None:
    config = tls_config(*cert_files)
    cert_files[1].unlink()
    with pytest.raises(ConfigError, match=r"server\.tls_key_file: cannot read"):
        Server(config)
