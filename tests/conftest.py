from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.procs import EXAMPLE, Stack, child_env
from support.supervision import Supervisor


@pytest.fixture(scope="session")
def example() -> dict[str, str]:
    """The bundled dataset, read independently of the worker's loader."""
    return json.loads(EXAMPLE.read_text(encoding="utf-8"))


#: Workers answer through the compiled loop (rokv.worker._native) when it is built,
#: else through Python; modules that set BOTH_PATHS = True run their tests
#: that use `stack` against each (protocol, lookup and client tests).
PATHS = ("compiled", "python")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stack" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_PATHS", False):
        # DIRECT_PATH = True adds a stack whose workers serve direct endpoints
        # (compiled loop), reached straight (stack.raw_endpoint, stack.client()).
        extra = ("direct",) if getattr(metafunc.module, "DIRECT_PATH", False) else ()
        metafunc.parametrize("stack", PATHS + extra, indirect=True, scope="module")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A broker and two workers on the bundled dataset, shared by a module."""
    path = getattr(request, "param", "compiled")
    s = Stack(tmp_path_factory.mktemp("stack"), pure_python=path == "python", direct=path == "direct")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture()
def make_stack(tmp_path: Path) -> Iterator:
    """Build stacks of one's own (other datasets, worker counts); all stopped after."""
    made: list[Stack] = []

    def make(**kwargs) -> Stack:
        s = Stack(tmp_path, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture()
def supervisor_factory(tmp_path: Path) -> Iterator:
    """Start supervisord -n on supervisord.conf with given ROKV_* variables; shut down after."""
    started: list[Supervisor] = []

    def start(**env: str) -> Supervisor:
        sup = Supervisor(tmp_path, child_env(**env))
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.shutdown()
