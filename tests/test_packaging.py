"""What `pip install rokv` gives a service: one `rokv` package, a client that
needs only pyzmq and msgpack, and server commands that say which extra they need."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from rokv import Client

from support.procs import EXAMPLE, REPO, Proc, Stack, child_env, free_port, scaled

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=scaled(300),
    )
    return next(out.glob("rokv-*.whl"))


def test_the_wheel_holds_only_the_rokv_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"rokv", next(t for t in tops if t.endswith(".dist-info"))}
    for module in (
        "rokv/__init__.py",
        "rokv/py.typed",
        "rokv/dataset.py",
        "rokv/loadgen.py",
        "rokv/server/monitor.py",
        "rokv/broker/main.py",
        "rokv/worker/main.py",
        "rokv/worker/loop.py",
        "rokv/worker/_native.pyi",
        "rokv/gateway/app.py",
        "rokv/ops/pool.py",
    ):
        assert module in names


@pytest.fixture(scope="module")
def light_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with the wheel installed without extras."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True, timeout=scaled(300)
    )
    return python


def test_a_plain_install_brings_only_pyzmq_and_msgpack(light_env: Path) -> None:
    listed = subprocess.run(
        [str(light_env), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    ).stdout
    installed = {p["name"].lower() for p in json.loads(listed)} - {"pip", "setuptools", "wheel"}
    assert installed == {"rokv", "pyzmq", "msgpack"}


def test_the_light_client_looks_keys_up_and_server_commands_name_their_extra(
    light_env: Path, tmp_path: Path, example: dict[str, str]
) -> None:
    stack = Stack(tmp_path).wait_ready()
    key = next(iter(example))
    code = (
        "import importlib.util, sys\n"
        "from rokv import Client, AsyncClient, KeyNotFound, InvalidKey, ServiceUnavailable, RokvError\n"
        f"with Client({stack.frontend!r}, timeout=2, retries=2) as kv:\n"
        f"    print(kv.get({key!r}))\n"
        "for name in ('numpy', 'supervisor', 'client', 'broker', 'worker'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
    )
    try:
        looked_up = subprocess.run(
            [str(light_env), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=scaled(60)
        )
        assert looked_up.returncode == 0, looked_up.stderr
        assert looked_up.stdout.strip() == example[key]
        rokv = light_env.parent / "rokv"
        got = subprocess.run(
            [str(rokv), "get", key, "--endpoint", stack.frontend], capture_output=True, text=True, timeout=scaled(60)
        )
        assert got.returncode == 0 and got.stdout.strip() == example[key]
        # rokv bench reads its dataset with the workers' loader (rokv.dataset), which needs no extra.
        bench = subprocess.run(
            [str(rokv), "bench", "--endpoint", stack.frontend, "--data", str(EXAMPLE), "-n", "200", "--json"],
            capture_output=True,
            text=True,
            timeout=scaled(60),
        )
        assert bench.returncode == 0, bench.stderr
        assert json.loads(bench.stdout)["requests"] == 200
        src = tmp_path / "d.json"
        src.write_text(json.dumps({key: "v"}), encoding="utf-8")
        built = subprocess.run(
            [str(rokv), "build", str(src), "-o", str(tmp_path / "d.rokv")],
            capture_output=True,
            text=True,
            timeout=scaled(60),
        )
        assert built.returncode == 2
        assert "pip install 'rokv[server]'" in built.stderr and "Traceback" not in built.stderr
        http = subprocess.run([str(light_env.parent / "rokv-http")], capture_output=True, text=True, timeout=scaled(60))
        assert http.returncode == 2
        assert "pip install 'rokv[http]'" in http.stderr and "Traceback" not in http.stderr
        top = subprocess.run(
            [str(rokv), "top", "--once", "--metrics", "127.0.0.1:9"], capture_output=True, text=True, timeout=scaled(60)
        )
        assert top.returncode == 2 and "pip install prometheus_client" in top.stderr, top.stderr
        assert "Traceback" not in top.stderr
        for command in ([str(light_env.parent / "rokv-pool"), "--here", str(tmp_path)], [str(rokv), "status"]):
            server = subprocess.run(command, capture_output=True, text=True, timeout=scaled(60))
            assert server.returncode == 2, server.stderr
            assert "needs supervisor, which comes with the server extra: pip install 'rokv[server]'" in server.stderr
            assert "Traceback" not in server.stderr
    finally:
        stack.stop()


def test_without_a_compiler_rokv_installs_and_runs_its_python_path(tmp_path: Path, example: dict[str, str]) -> None:
    # The compiled loop is optional: a machine without a C compiler builds
    # rokv without it, and workers run the Python loop, saying so once.
    out, src = tmp_path / "wheel", tmp_path / "src"
    # A copy of the tracked files: nothing built before in this checkout may slip in.
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
        env={**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false"},
        capture_output=True,
        text=True,
        timeout=scaled(300),
    )
    assert build.returncode == 0, build.stderr
    wheel = next(out.glob("rokv-*.whl"))
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    root = tmp_path / "venv"
    venv.create(root, with_pip=True)  # not this environment's rokv: its own, without the compiled module
    python = root / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=scaled(300),
    )
    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    env = child_env()
    broker = Proc(
        "broker", [str(python), "-m", "rokv.broker", "--frontend", frontend, "--backend", backend], tmp_path, env
    )
    worker = Proc(
        "worker", [str(python), "-m", "rokv.worker", "--backend", backend, "--data", str(EXAMPLE)], tmp_path, env
    )
    try:
        key = next(iter(example))
        with Client(frontend, timeout=1, retries=5) as client:
            assert client.get(key) == example[key]
        log = worker.log()
        assert log.count("pure-Python path in use") == 1 and "compiled module is not installed" in log, log
    finally:
        worker.stop()
        broker.stop()
