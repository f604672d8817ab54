"""JSON against Protobuf fan-out: Aether's server CPU per delivery, one encoding per run.

A fresh Aether process per run (the harness's config: no limits, no history, pings off); N
subscribers of one channel, all speaking the run's encoding (trio-websocket, in this process);
one JSON publisher sends M publications of a 100-byte payload as fast as the server takes them.
The server's CPU (user + system, /proc/<pid>/stat) from the first publication until every
subscriber has counted all M, divided by N x M. Runs alternate json, protobuf, ... and the
median of each is reported (the machine is shared: single runs wander).

    .venv/bin/python ops/bench/protobuf_fanout.py [--subscribers 500] [--messages 200] [--runs 3]

Not part of the test suite (it measures speed); issue 18 asks Protobuf to be within 20% of JSON.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, str(Path(__file__).parent))
from servers import aether_config, free_port

from aether_trio.auth.tokens import mint_token
from aether_trio.protocol.protobuf import message_class, varint

CHANNEL = "fanout"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def protobuf_commands(token: str) -> bytes:
    command = message_class("Command")
    connect = command(id=1, connect=message_class("ConnectRequest")(token=token))
    subscribe = command(id=2, subscribe=message_class("SubscribeRequest")(channel=CHANNEL))
    return b"".join(
        varint(len(c)) + c for c in (m.SerializeToString() for m in (connect, subscribe))
    )


def _replies(frame: bytes) -> int:
    """How many Replies with an id (not pushes) a Protobuf frame holds."""
    reply, count, pos = message_class("Reply"), 0, 0
    while pos < len(frame):
        length = shift = 0
        while True:
            byte = frame[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        count += reply.FromString(frame[pos : pos + length]).id > 0
        pos += length
    return count


async def subscriber(
    url: str, protobuf: bool, token: str, messages: int, ready: trio.Semaphore, done: list[int]
) -> None:
    subprotocols = ["centrifuge-protobuf"] if protobuf else []
    async with open_websocket_url(url, subprotocols=subprotocols, max_message_size=2**24) as ws:
        if protobuf:
            await ws.send_message(protobuf_commands(token))
        else:
            await ws.send_message(
                f'{{"id":1,"connect":{{"token":"{token}"}}}}\n'
                f'{{"id":2,"subscribe":{{"channel":"{CHANNEL}"}}}}'
            )
        replies = 0
        while replies < 2:  # connect and subscribe replies (possibly in one frame)
            frame = await ws.get_message()
            replies += _replies(frame) if isinstance(frame, bytes) else frame.count('"id":')
        ready.release()
        seen = 0
        marker: str | bytes = b"#M" if protobuf else "#M"
        while seen < messages:
            frame = await ws.get_message()
            seen += frame.count(marker)  # type: ignore[arg-type]
        done.append(seen)
        await ws.aclose()


async def one_run(url: str, pid: int, protobuf: bool, secret: str, n: int, m: int) -> float:
    ready = trio.Semaphore(0)
    done: list[int] = []
    async with trio.open_nursery() as nursery:
        for i in range(n):
            token = mint_token(secret, {"sub": f"s{i}"})
            nursery.start_soon(subscriber, url, protobuf, token, m, ready, done)
        for _ in range(n):
            await ready.acquire()
        async with open_websocket_url(url) as publisher:
            token = mint_token(secret, {"sub": "publisher"})
            await publisher.send_message(f'{{"id":1,"connect":{{"token":"{token}"}}}}')
            await publisher.get_message()
            payload = "x" * 92
            start = cpu_seconds(pid)
            for batch in range(0, m, 10):
                lines = [
                    orjson.dumps(
                        {
                            "id": 2 + k,
                            "publish": {"channel": CHANNEL, "data": f"#M{k:06d}{payload}"},
                        }
                    ).decode()
                    for k in range(batch, min(batch + 10, m))
                ]
                await publisher.send_message("\n".join(lines))
            with trio.fail_after(120):
                # Polled: cheaper to write than an event per subscriber, and off the server.
                while len(done) < n:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            used = cpu_seconds(pid) - start
    return used / (n * m) * 1e6  # µs per delivery


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"json": [], "protobuf": []}
    for run in range(args.runs * 2):
        protobuf = run % 2 == 1
        secret = secrets.token_hex(32)
        port, http_port = free_port(), free_port()
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "aether.toml"
            text = aether_config(port, http_port, secret, None)
            text += "[client]\nping_interval = 0.0\npong_timeout = 0.0\n"
            text += f'[admin]\ndata_dir = "{tmp}"\n'
            config.write_text(text)
            log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 (closed below)
            server = subprocess.Popen(
                [sys.executable, "-m", "aether_trio", "serve", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
            try:
                url = f"ws://127.0.0.1:{port}/connection/websocket"
                deadline = time.monotonic() + 15
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                per = trio.run(
                    one_run, url, server.pid, protobuf, secret, args.subscribers, args.messages
                )
            except BaseException:
                log.flush()
                sys.stderr.write((Path(tmp) / "server.log").read_text()[-3000:])
                raise
            finally:
                server.terminate()
                server.wait(10)
                log.close()
        name = "protobuf" if protobuf else "json"
        results[name].append(per)
        print(f"run {run + 1}: {name:8} {per:.3f} µs of server CPU per delivery", flush=True)
    json_us, proto_us = statistics.median(results["json"]), statistics.median(results["protobuf"])
    print(
        f"median: json {json_us:.3f} µs, protobuf {proto_us:.3f} µs per delivery "
        f"({(proto_us / json_us - 1) * 100:+.1f}%), {args.subscribers} subscribers x "
        f"{args.messages} messages"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
