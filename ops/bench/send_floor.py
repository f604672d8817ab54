"""The kernel's floor for paced fan-out on this machine: CPU per `send` of one small frame to each
of many loopback TCP connections, in plain Python with nothing else in the loop.

A paced delivery to a subscriber that keeps up is one `send` of one frame: this is what a server
that writes each subscriber's frame with one call cannot go below, whatever its language. The
receivers are drained between rounds (as the load generator reads), so every send finds room
and wakes a reader, like a delivery does.

    .venv/bin/python ops/bench/send_floor.py [--connections 1000] [--rounds 20] [--size 120]

Prints one JSON object: µs of CPU (user, system, total) and of wall time per send, best of
`--repeat` measurements (the machine's other work only ever adds).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time


def measure(connections: int, rounds: int, size: int, repeat: int) -> dict[str, float]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    clients, servers = [], []
    try:
        for _ in range(connections):
            client = socket.create_connection(listener.getsockname())
            server, _address = listener.accept()
            server.setblocking(False)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.setblocking(False)
            clients.append(client)
            servers.append(server)
        frame = b"\x81" + bytes([size - 2]) + b"x" * (size - 2)
        best: dict[str, float] = {}
        for _ in range(repeat):
            wall0, cpu0 = time.perf_counter(), os.times()
            for _round in range(rounds):
                for server in servers:
                    server.send(frame)
            cpu1, wall = os.times(), time.perf_counter() - wall0
            for client in clients:
                try:
                    while client.recv(1 << 16):
                        pass
                except BlockingIOError:
                    pass
            sends = rounds * connections
            row = {
                "user_us": (cpu1.user - cpu0.user) / sends * 1e6,
                "system_us": (cpu1.system - cpu0.system) / sends * 1e6,
                "wall_us": wall / sends * 1e6,
            }
            row["cpu_us"] = row["user_us"] + row["system_us"]
            if not best or row["cpu_us"] < best["cpu_us"]:
                best = row
        return {k: round(v, 2) for k, v in best.items()}
    finally:
        for sock in (*clients, *servers, listener):
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=120, help="frame bytes (< 128)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    result = measure(args.connections, args.rounds, min(args.size, 127), args.repeat)
    print(json.dumps({"connections": args.connections, "frame_bytes": args.size, **result}))


if __name__ == "__main__":
    main()
