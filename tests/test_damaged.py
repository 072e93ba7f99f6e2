"""A damaged value: a .rokv file whose value bytes changed on disk after it
was verified (or that was deployed with --no-verify), so that a value is not
valid UTF-8. The caller gets a prompt ``DamagedValue`` naming the key, the
worker logs and counts it, and every other key keeps answering, on the
compiled path and the Python one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from rokv import AsyncClient, Client, DamagedValue, KeyNotFound, ProtocolError
from rokv import protocol as p
from rokv.worker.build import build
from rokv.worker.handler import Handler
from rokv.worker.reader import open_store

from support.procs import EXAMPLE, Proc, child_env, free_port, scaled, seen_workers, start_broker, wait_for
from support.scrape import health, scrape, total

#: A key the bundled dataset does not hold.
MISSING = "8a35eb59-62b3-481c-8875-1f248df4c952"
#: Calls get one try this long: a reply dropped as unreadable (as before the
#: fix) would cost all of it; an answer takes one round trip, well within
#: PROMPT even on a loaded machine.
LONG_TRY = 30.0
PROMPT = scaled(10)


def value_span(path: Path, key: str) -> tuple[int, int]:
    """Where ``key``'s value lies in the file: (offset, length), as FORMAT.md
    says (values_offset + offsets[i], up to the 0xFF separator)."""
    with open_store(path) as store:
        index = list(store.keys()).index(key)
        h = store.header
        start, end = store._offsets[index], store._offsets[index + 1]
        return h.values_offset + start, end - start - 1


def damage(path: Path, key: str, raw: bytes = b"\x80") -> None:
    """Overwrite the start of ``key``'s value with ``raw`` in place: a
    stray continuation byte by default, which is not UTF-8."""
    offset, length = value_span(path, key)
    assert length >= len(raw), "choose a key with a longer value"
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(raw)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, example: dict[str, str]) -> tuple[Path, str, list[str]]:
    """A .rokv of the bundled data with one damaged value: (path, the damaged
    key, some intact keys)."""
    path = tmp_path_factory.mktemp("damaged") / "data.rokv"
    build(EXAMPLE, path)
    keys = [k for k in example if len(example[k].encode()) >= 4]
    bad = keys[100]
    damage(path, bad)
    return path, bad, keys[:100] + keys[101:200]


# ---------------------------------------------------------------- the handler, in-process


def test_the_python_handler_answers_a_damaged_value_and_counts_it(
    dataset: tuple[Path, str, list[str]], example: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    path, bad, good = dataset
    with open_store(path) as store:
        handler = Handler(store, worker_id="w", dataset=str(path))
        for spelling in (bad, bad.upper()):
            reply = msgpack.unpackb(handler.answer(p.encode_request(7, p.OP_GET, spelling)))
            assert reply == {
                "id": 7,
                "error": p.DAMAGED_VALUE,
                "message": p.error_message(p.DAMAGED_VALUE, key=bad),
            }
        keys = [*good[:20], bad, MISSING, *good[20:40]]  # 42 keys: numpy's batch path first
        reply = msgpack.unpackb(handler.answer(p.encode_request(8, p.OP_MGET, keys)))
        assert reply["error"] == p.DAMAGED_VALUE and reply["index"] == 20 and reply["damaged"] == [20]
        assert bad in reply["message"]
        assert reply["values"] == [example.get(k) if k != bad else None for k in keys]
        # An invalid key still refuses the whole mget, damaged value or not.
        reply = msgpack.unpackb(handler.answer(p.encode_request(9, p.OP_MGET, [bad, "nope"])))
        assert reply["error"] == p.INVALID_KEY and reply["index"] == 1
        snap = handler.stats.snapshot()
    assert snap.requests[p_index("get", "damaged")] == 2
    assert snap.requests[p_index("mget", "damaged")] == 1
    assert snap.keys[3] == 2 + 1  # KEY_OUTCOMES[3] == "damaged": two gets, one mget key
    assert snap.keys[0] == 40 and snap.keys[1] == 1
    # Logged, once for this burst (rate-limited), naming the key and the file.
    lines = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(lines) == 1 and bad in lines[0] and str(path) in lines[0] and "rokv verify" in lines[0]


def p_index(op: str, outcome: str) -> int:
    from rokv.server.stats import KEY_OUTCOMES, request_index

    assert KEY_OUTCOMES[3] == "damaged"
    return request_index(op, outcome)


#: Byte sequences the strict UTF-8 decoder refuses, and ones it accepts: the
#: compiled path must judge each the same way.
REFUSED = [b"\x80", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf5"]
REFUSED += [b"\xe2\x82", b"\xf0\x9f\x98", b"\xfe", b"abcdefgh\x80", b"\xc3"]
ACCEPTED = [b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9d\x84\x9e", b"\xed\x9f\xbf", b"\xf4\x8f\xbf\xbf", b"abcdefghij"]


@pytest.mark.parametrize("raw", REFUSED + ACCEPTED, ids=lambda raw: raw.hex())
def test_the_compiled_path_judges_utf8_as_python_does(raw: bytes, tmp_path: Path, example: dict[str, str]) -> None:
    from rokv.worker import native

    module = native.load()
    if module is None:
        pytest.skip(f"no compiled path here: {native.reason()}")
    path = tmp_path / "data.rokv"
    build(EXAMPLE, path)
    # A value long enough for the bytes, with ASCII after them: the end of
    # the value must not hide a truncated sequence either.
    key = next(k for k in example if len(example[k].encode()) >= len(raw) + 9)
    offset, length = value_span(path, key)
    with open(path, "r+b") as f:
        f.seek(offset + length - len(raw))  # at the very end of the value
        f.write(raw)
    with open_store(path) as store:
        lookup = store.native_lookup(module)
        body = p.encode_request(1, p.OP_GET, key)
        answer = module.answer(lookup, body)
        python = Handler(store, worker_id="w", dataset="d").answer(body)
        if raw in ACCEPTED:
            assert answer == python and msgpack.unpackb(answer)["value"].encode().endswith(raw)
        else:
            assert answer is None, "a damaged value is left to Python"
            assert msgpack.unpackb(python)["error"] == p.DAMAGED_VALUE
        del lookup


# ---------------------------------------------------------------- a real worker on each path


class DamagedStack:
    """A broker, one worker serving the damaged file and publishing metrics,
    and rokv-metrics for the host's counters and /healthz."""

    def __init__(self, log_dir: Path, data: Path, *, pure_python: bool) -> None:
        folder = log_dir / "metrics"
        extra = {"ROKV_PURE_PYTHON": "1"} if pure_python else {}
        env = child_env(PROMETHEUS_MULTIPROC_DIR=str(folder), **extra)
        self.frontend = f"tcp://127.0.0.1:{free_port()}"
        backend = f"tcp://127.0.0.1:{free_port()}"
        self.address = f"127.0.0.1:{free_port()}"
        self.broker = start_broker(log_dir, self.frontend, backend)
        self.worker = Proc(
            "worker",
            [sys.executable, "-m", "rokv.worker", "--backend", backend, "--data", str(data), "--name", "w"],
            log_dir,
            env,
        )
        self.exporter = Proc(
            "exporter",
            [sys.executable, "-m", "rokv.ops.exporter", "--listen", self.address, "--dir", str(folder)],
            log_dir,
            env,
        )

    def stop(self) -> None:
        for proc in (self.worker, self.broker, self.exporter):
            proc.stop()


@pytest.fixture(scope="module", params=["compiled", "python"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dataset: tuple[Path, str, list[str]]
) -> Iterator[DamagedStack]:
    pure = request.param == "python"
    if not pure:
        from rokv.worker import native

        if native.load() is None:
            pytest.skip(f"no compiled path here: {native.reason()}")
    stack = DamagedStack(tmp_path_factory.mktemp(request.param), dataset[0], pure_python=pure)
    try:
        seen_workers(stack.frontend, 1)
        path_line = "pure-Python path in use" if pure else "compiled hot path in use"
        assert path_line in stack.worker.log()
        yield stack
    finally:
        stack.stop()


def test_a_get_of_a_damaged_value_fails_at_once_naming_the_key(
    served: DamagedStack, dataset: tuple[Path, str, list[str]], example: dict[str, str]
) -> None:
    _, bad, good = dataset
    # One try of 30 s: a reply dropped as unreadable would cost all of it.
    with Client(served.frontend, timeout=LONG_TRY, retries=0) as client:
        started = time.monotonic()
        with pytest.raises(DamagedValue) as caught:
            client.get(bad)
        assert time.monotonic() - started < PROMPT, "one round trip, not a timeout"
        assert caught.value.key == bad and caught.value.code == p.DAMAGED_VALUE
        assert isinstance(caught.value, ProtocolError)
        assert f"key {bad}" in str(caught.value) and "damaged" in str(caught.value)
        # Other keys keep answering, before and after.
        assert [client.get(k) for k in good[:50]] == [example[k] for k in good[:50]]
        with pytest.raises(KeyNotFound):
            client.get(MISSING)


def test_a_get_many_holding_a_damaged_value_fails_naming_its_position(
    served: DamagedStack, dataset: tuple[Path, str, list[str]], example: dict[str, str]
) -> None:
    _, bad, good = dataset
    keys = [*good[:30], MISSING, bad, *good[30:60]]
    # The damaged key is in the second chunk.
    with Client(served.frontend, batch_size=20, timeout=LONG_TRY, retries=0) as client:
        started = time.monotonic()
        with pytest.raises(DamagedValue) as caught:
            client.get_many(keys)
        assert time.monotonic() - started < PROMPT
        assert caught.value.index == 31 and caught.value.key == bad
        assert str(caught.value).startswith("keys[31]: ") and bad in str(caught.value)
        assert client.get_many(good) == [example[k] for k in good]


def test_coalesced_gets_beside_a_damaged_value_get_their_own_answers(
    served: DamagedStack, dataset: tuple[Path, str, list[str]], example: dict[str, str]
) -> None:
    _, bad, good = dataset

    async def run() -> list[Any]:
        async with AsyncClient(served.frontend, timeout=LONG_TRY, retries=0) as client:
            keys = [*good[:10], bad, MISSING, *good[10:20]]
            return await asyncio.gather(*(client.get(k) for k in keys), return_exceptions=True)

    started = time.monotonic()
    results = asyncio.run(run())
    assert time.monotonic() - started < PROMPT
    assert results[:10] == [example[k] for k in good[:10]]
    assert isinstance(results[10], DamagedValue) and results[10].key == bad and bad in str(results[10])
    assert isinstance(results[11], KeyNotFound)
    assert results[12:] == [example[k] for k in good[10:20]]


def test_the_worker_logs_and_counts_damaged_values_and_stays_healthy(
    served: DamagedStack, dataset: tuple[Path, str, list[str]]
) -> None:
    _, bad, good = dataset
    before = _settled_counts(served)
    lines_before = served.worker.log().count("is damaged")
    with Client(served.frontend) as client:
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(DamagedValue):
                client.get(bad)
        with pytest.raises(DamagedValue):
            client.get_many([good[0], bad])
        burst = time.monotonic() - started
    expected = (before[0] + 20, before[1] + 1, before[2] + 21)
    wait_for(lambda: _damaged_counts(served) == expected, 10, f"the damaged-value counts to reach {expected}")
    log = served.worker.log()
    assert f"key {bad}: its value in" in log and "is damaged" in log and "rokv verify" in log
    # Rate-limited: a line a second at most, not one per answer.
    assert log.count("is damaged") - lines_before <= 1 + int(burst), log
    # A data fault, not a serving fault: the host stays healthy (docs/operations.md says why).
    status, report = health(served.address)
    assert status == 200, report


def _settled_counts(served: DamagedStack) -> tuple[float, float, float]:
    """The counts once what earlier tests did is published (a worker publishes
    four times a second): two equal readings half a second apart."""
    last = _damaged_counts(served)
    for _ in range(40):
        time.sleep(0.5)
        now = _damaged_counts(served)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the damaged-value counts never settled: {last}")


def _damaged_counts(served: DamagedStack) -> tuple[float, float, float]:
    samples = scrape(served.address)
    return (
        total(samples, "rokv_worker_requests_total", op="get", outcome="damaged"),
        total(samples, "rokv_worker_requests_total", op="mget", outcome="damaged"),
        total(samples, "rokv_worker_keys_total", outcome="damaged"),
    )


def test_rokv_get_of_a_damaged_value_exits_at_once_naming_the_key(
    served: DamagedStack, dataset: tuple[Path, str, list[str]]
) -> None:
    _, bad, _ = dataset
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "rokv", "get", bad, "--endpoint", served.frontend, "--timeout", str(LONG_TRY)],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert time.monotonic() - started < PROMPT + scaled(5)  # and a Python start
    assert done.returncode == 4, done.stderr
    assert bad in done.stderr and "damaged" in done.stderr and "refused" not in done.stderr
    assert "Traceback" not in done.stderr


def test_protocol_md_documents_the_code() -> None:
    text = (Path(__file__).resolve().parents[1] / "PROTOCOL.md").read_text(encoding="utf-8")
    assert f"`{p.DAMAGED_VALUE}`" in text and f"`{p.F_DAMAGED}`" in text
