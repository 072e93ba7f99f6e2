"""The transport ceiling: rokv's topology doing the least possible work.

Same shape as rokv (a ``zmq.proxy`` between a ROUTER for clients and a DEALER
for workers, the same number of worker processes, client processes with the
same number of requests in flight), but the worker only decodes msgpack, looks
the key(s) up in a dict and encodes the reply, and the client only packs a
request, sends it, receives and unpacks the reply: no validation, no retries,
no answer checks. What rokv does over that is its overhead, measured as a
ratio in the same run by ``benchmarks/run.py``.

Three clients do that least work: a blocking loop (the default), and two for
asyncio, to which rokv's ``AsyncClient`` compares: ``--asyncio zmq``, plain
``zmq.asyncio`` coroutines (one future per received message), and
``--asyncio drain``, the transport ``AsyncClient`` uses (the socket's ZMQ_FD
watched with ``loop.add_reader``, every wake-up draining all replies with
non-blocking receives, sends gathered into one burst per loop turn) without
any of rokv's validation, timers or retries: the floor for an asyncio client.

    python benchmarks/ceiling.py broker --frontend tcp://127.0.0.1:7001 --backend tcp://127.0.0.1:7002
    python benchmarks/ceiling.py worker --backend tcp://127.0.0.1:7002 --data data/example.json
    python benchmarks/ceiling.py client --endpoint tcp://127.0.0.1:7001 --data data/example.json \\
        --processes 1 --concurrency 64 --keys 1 --duration 3 [--asyncio drain]

Broker and worker run until killed (SIGTERM). The client prints one JSON line
shaped like ``rokv bench --json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rokv.loadgen import Config, Tally, load_expected, summary


def run_broker(frontend: str, backend: str, io_threads: int) -> None:
    ctx = zmq.Context(io_threads=io_threads)
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    front.bind(frontend)
    back.bind(backend)
    zmq.proxy(front, back)


def run_worker(backend: str, data: str, bind: bool = False) -> None:
    """Serve ``data`` to a broker at ``backend`` or, with ``bind``, to
    clients connecting to a ROUTER bound there (one hop, no broker)."""
    table = load_expected(data)
    if bind:
        sock = zmq.Context().socket(zmq.ROUTER)
        sock.bind(backend)
    else:
        sock = zmq.Context().socket(zmq.DEALER)
        sock.connect(backend)
    pack, unpackb, get = msgpack.Packer().pack, msgpack.unpackb, table.get
    # Frame by frame with int flags: pyzmq's recv_multipart/send_multipart
    # ask ZMQ_RCVMORE through an enum conversion after every frame.
    recv, send, sndmore = sock.recv, sock.send, int(zmq.SNDMORE)
    info = {"id": f"ceiling:{os.getpid()}", "pid": os.getpid(), "keys": len(table)}
    while True:
        route = recv()
        req = unpackb(recv())
        op = req["op"]
        if op == "get":
            reply = {"id": req["id"], "value": get(req["key"])}
        elif op == "mget":
            reply = {"id": req["id"], "values": list(map(get, req["keys"]))}
        else:
            reply = {"id": req["id"], "worker": info}
        send(route, sndmore)
        send(pack(reply))


def request_pool(keys: list[str], per_request: int, seed: int) -> list[list[str]]:
    """4,096 requests' keys drawn from ``keys``, cycled through by a client."""
    rng = random.Random(seed)
    return [[keys[int(rng.random() * len(keys))] for _ in range(per_request)] for _ in range(4096)]


def finish(tally: Tally, per_request: int, cpu0: float, t0: float) -> Tally:
    """``tally`` completed with the run's time, CPU and counts (every answer
    of the ceiling counts as a value: it checks nothing)."""
    tally.elapsed = time.perf_counter() - t0
    tally.cpu = time.process_time() - cpu0
    tally.keys = tally.requests * per_request
    tally.answers["value"] = tally.requests
    return tally


def client_loop(
    endpoint: str, keys: list[str], concurrency: int, per_request: int, duration: float, quota: int | None, seed: int
) -> Tally:
    """Keep ``concurrency`` requests in flight for ``duration`` seconds (or
    ``quota`` requests); a request is a get, or an mget of ``per_request`` keys."""
    pool = request_pool(keys, per_request, seed)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 5000  # a lost reply ends the run instead of hanging it
    sock.sndhwm = sock.rcvhwm = 0
    sock.connect(endpoint)
    pack, unpackb = msgpack.Packer().pack, msgpack.unpackb
    clock = time.perf_counter
    tally = Tally()
    sent_at: dict[int, float] = {}
    rid = 0
    mget = per_request > 1

    def send_one() -> None:
        nonlocal rid
        rid += 1
        chosen = pool[rid & 4095]
        body = pack(
            {"v": 1, "id": rid, "op": "mget", "keys": chosen}
            if mget
            else {"v": 1, "id": rid, "op": "get", "key": chosen[0]}
        )
        sent_at[rid] = clock()
        sock.send(body)

    cpu0, t0 = time.process_time(), clock()
    deadline = t0 + duration
    limit = quota if quota is not None else 1 << 62
    for _ in range(min(concurrency, limit)):
        send_one()
    try:
        while sent_at:
            reply = unpackb(sock.recv())
            now = clock()
            tally.record(now - sent_at.pop(reply["id"]))
            tally.requests += 1
            if rid < limit and now < deadline:
                send_one()
    except zmq.Again:
        tally.errors["unavailable"] += len(sent_at)
    finish(tally, per_request, cpu0, t0)
    sock.close()
    return tally


def async_client_loop(
    endpoint: str, keys: list[str], concurrency: int, per_request: int, duration: float, quota: int | None, seed: int
) -> Tally:
    """The same load through plain ``zmq.asyncio``: ``concurrency`` coroutines,
    each sending a request and awaiting its reply, which one reader coroutine
    hands over by id."""
    import asyncio

    import zmq.asyncio

    pool = request_pool(keys, per_request, seed)
    pack, unpackb = msgpack.Packer().pack, msgpack.unpackb
    clock = time.perf_counter
    tally = Tally()
    mget = per_request > 1
    limit = quota if quota is not None else 1 << 62

    async def main() -> None:
        sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 0
        sock.connect(endpoint)
        waiting: dict[int, asyncio.Future] = {}
        loop = asyncio.get_running_loop()
        ids = iter(range(1, 1 << 62))
        deadline = clock() + duration

        async def reader() -> None:
            while True:
                reply = unpackb(await sock.recv())
                future = waiting.pop(reply["id"], None)
                if future is not None:
                    future.set_result(reply)

        async def caller() -> None:
            while tally.requests < limit and clock() < deadline:
                rid = next(ids)
                chosen = pool[rid & 4095]
                future = loop.create_future()
                waiting[rid] = future
                started = clock()
                await sock.send(
                    pack(
                        {"v": 1, "id": rid, "op": "mget", "keys": chosen}
                        if mget
                        else {"v": 1, "id": rid, "op": "get", "key": chosen[0]}
                    )
                )
                await future
                tally.record(clock() - started)
                tally.requests += 1

        task = asyncio.ensure_future(reader())
        try:  # a lost reply ends the run instead of hanging it
            await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(concurrency))), duration + 10)
        except asyncio.TimeoutError:
            tally.errors["unavailable"] += len(waiting)
        task.cancel()
        sock.close()

    cpu0, t0 = time.process_time(), clock()
    asyncio.run(main())
    return finish(tally, per_request, cpu0, t0)


def drain_client_loop(
    endpoint: str, keys: list[str], concurrency: int, per_request: int, duration: float, quota: int | None, seed: int
) -> Tally:
    """The same load from ``concurrency`` asyncio coroutines over the
    transport of rokv's ``AsyncClient``: plain futures completed by a reader
    callback that drains the socket whenever ZMQ_FD wakes the loop, and the
    requests of one loop turn sent together. No timers, retries or checks."""
    import asyncio

    pool = request_pool(keys, per_request, seed)
    pack, unpackb = msgpack.Packer().pack, msgpack.unpackb
    clock = time.perf_counter
    tally = Tally()
    mget = per_request > 1
    limit = quota if quota is not None else 1 << 62
    noblock = int(zmq.NOBLOCK)

    async def main() -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 0
        sock.connect(endpoint)
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future] = {}
        outbox: list[bytes] = []
        pump_due = False
        ids = iter(range(1, 1 << 62))
        deadline = clock() + duration

        def drain() -> None:
            while True:
                try:
                    reply = unpackb(sock.recv(noblock))
                except zmq.Again:
                    return
                future = waiting.pop(reply["id"], None)
                if future is not None:
                    future.set_result(reply)

        def pump() -> None:
            nonlocal pump_due, outbox
            pump_due = False
            bodies, outbox = outbox, []
            for body in bodies:
                sock.send(body, noblock)
            drain()  # a zmq call may have consumed ZMQ_FD's edge

        async def caller() -> None:
            nonlocal pump_due
            while tally.requests < limit and clock() < deadline:
                rid = next(ids)
                chosen = pool[rid & 4095]
                future = loop.create_future()
                waiting[rid] = future
                outbox.append(
                    pack(
                        {"v": 1, "id": rid, "op": "mget", "keys": chosen}
                        if mget
                        else {"v": 1, "id": rid, "op": "get", "key": chosen[0]}
                    )
                )
                if not pump_due:
                    pump_due = True
                    loop.call_soon(pump)
                started = clock()
                await future
                tally.record(clock() - started)
                tally.requests += 1

        loop.add_reader(sock.getsockopt(zmq.FD), drain)
        try:  # a lost reply ends the run instead of hanging it
            await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(concurrency))), duration + 10)
        except asyncio.TimeoutError:
            tally.errors["unavailable"] += len(waiting)
        loop.remove_reader(sock.getsockopt(zmq.FD))
        sock.close()

    cpu0, t0 = time.process_time(), clock()
    asyncio.run(main())
    return finish(tally, per_request, cpu0, t0)


def run_forked(target: Any, arglists: list[tuple], timeout: float) -> Tally:
    """Run ``target(*args)`` in one forked process per ``args``, started
    together; the sum of the tallies they return."""
    ctx = mp.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()

    def child(args: tuple) -> None:
        start.wait(60)
        results.put(target(*args))

    procs = [ctx.Process(target=child, args=(a,), daemon=True) for a in arglists]
    for proc in procs:
        proc.start()
    time.sleep(0.2)  # let every child reach its start line
    start.set()
    total = Tally()
    try:
        for _ in procs:
            total.add(results.get(timeout=timeout))
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return total


def run_clients(args: argparse.Namespace) -> dict[str, Any]:
    keys = list(load_expected(args.data))
    quota = None if args.requests is None else args.requests // args.processes
    arglists = [
        (args.endpoint, keys, args.concurrency, args.keys, args.duration, quota, args.seed * 1000 + i)
        for i in range(args.processes)
    ]
    loops = {None: client_loop, "zmq": async_client_loop, "drain": drain_client_loop}
    total = run_forked(loops[args.asyncio], arglists, args.duration + 60)
    cfg = Config(
        endpoint=args.endpoint,
        data=args.data,
        processes=args.processes,
        concurrency=args.concurrency,
        keys_per_request=args.keys,
        duration=args.duration,
        requests=args.requests,
        client=f"ceiling-asyncio-{args.asyncio}" if args.asyncio else "ceiling",
    )
    return summary(cfg, total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    b = sub.add_parser("broker")
    b.add_argument("--frontend", required=True)
    b.add_argument("--backend", required=True)
    b.add_argument("--io-threads", type=int, default=1)
    w = sub.add_parser("worker")
    w.add_argument("--backend", required=True)
    w.add_argument("--data", required=True)
    w.add_argument(
        "--bind",
        action="store_true",
        help="bind a ROUTER at --backend for clients to connect to directly, instead of connecting to a broker",
    )
    c = sub.add_parser("client")
    c.add_argument("--endpoint", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--processes", type=int, default=1)
    c.add_argument("--concurrency", type=int, default=1)
    c.add_argument("--keys", type=int, default=1)
    c.add_argument("--duration", type=float, default=3.0)
    c.add_argument("--requests", type=int, default=None)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument(
        "--asyncio",
        choices=("zmq", "drain"),
        default=None,
        help="asyncio coroutines instead of a blocking loop: over plain zmq.asyncio, or over AsyncClient's transport",
    )
    args = parser.parse_args(argv)
    if args.role == "broker":
        run_broker(args.frontend, args.backend, args.io_threads)
    elif args.role == "worker":
        run_worker(args.backend, args.data, args.bind)
    else:
        print(json.dumps(run_clients(args), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
