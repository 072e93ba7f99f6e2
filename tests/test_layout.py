"""Import boundaries of the installed ``rokv`` package: each folder is one
layer, and imports run one way.

The layers, by installed name (folder in parentheses):

- client: ``rokv`` and its modules (client/): the library and the ``rokv`` CLI;
- server: ``rokv.server`` (server/): what the broker and the workers share;
- the daemons: ``rokv.broker``, ``rokv.worker``, ``rokv.gateway``;
- ops: ``rokv.ops`` (ops/): running a pool on hosts.

Every layer may import the client (it holds the protocol). The client
imports no other layer; the server imports only the client; a daemon imports
the client and the server, never another daemon nor ops; ops may import all.

"Imports" means every ``import`` statement anywhere in a module: at module
level, inside functions and under ``TYPE_CHECKING`` alike. The one way the
client reaches server code is by name: ``rokv.cli.SERVER_COMMANDS`` lists the
commands that need the server extra (build, inspect, verify, deploy, top) with
their module, which ``rokv.cli`` loads with :func:`importlib.import_module`
only when one of them runs. No other client module calls ``import_module``
or ``__import__``, and importing every client module loads no other layer.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from support.procs import REPO, child_env, scaled

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CLIENT = "client"
#: Layer -> the layers it may import besides the client.
ALLOWED = {
    CLIENT: set(),
    "server": set(),
    "broker": {"server"},
    "worker": {"server"},
    "gateway": {"server"},
    "ops": {"server", "broker", "worker", "gateway"},
}


def layer_of(module: str) -> str | None:
    """The layer of a ``rokv`` module; None for anything outside rokv."""
    parts = module.split(".")
    if parts[0] != "rokv":
        return None
    if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != CLIENT:
        return parts[1]
    return CLIENT


def installed_modules() -> dict[str, Path]:
    """Every module of the installed package: name -> file."""
    modules: dict[str, Path] = {}
    for package in ["rokv", *(f"rokv.{layer}" for layer in ALLOWED if layer != CLIENT)]:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None, f"{package} is not installed"
        for path in Path(spec.origin).parent.glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file."""
    found: list[tuple[int, str]] = []
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            # "from rokv import server" imports a layer too
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def test_the_layers_are_the_installed_packages() -> None:
    with open(REPO / "pyproject.toml", "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    assert {layer_of(p) for p in packages} == set(ALLOWED)
    assert sorted(packages) == sorted(["rokv", *(f"rokv.{layer}" for layer in ALLOWED if layer != CLIENT)])


def test_imports_run_one_way_between_layers() -> None:
    modules = installed_modules()
    assert len(modules) > 40 and "rokv.cli" in modules and "rokv.ops.pool" in modules
    wrong = []
    for module, path in sorted(modules.items()):
        source = layer_of(module)
        assert source is not None
        for line, name in imports_of(module, path):
            target = layer_of(name)
            if target not in (None, CLIENT, source) and target not in ALLOWED[source]:
                wrong.append(f"{path}:{line}: {module} ({source}) imports {name} ({target})")
    assert wrong == []


def test_the_rule_sees_a_crossing_import(tmp_path: Path) -> None:
    # The checker itself: a client module importing the worker, directly,
    # lazily or relatively, is seen.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from rokv.errors import RokvError\n"
        "def f():\n    import rokv.worker.reader\n"
        "from rokv import ops\n"
        "from .worker import load\n",
        encoding="utf-8",
    )
    names = [name for _, name in imports_of("rokv.bad", bad)]
    assert sorted(layer_of(n) for n in names if layer_of(n) != CLIENT) == ["ops", "worker", "worker", "worker"]


def test_the_client_reaches_server_code_only_through_the_cli_by_name() -> None:
    from rokv.cli import SERVER_COMMANDS

    assert {layer_of(module) for module, _ in SERVER_COMMANDS.values()} == {"worker", "ops"}
    dynamic = []
    for module, path in installed_modules().items():
        if layer_of(module) != CLIENT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("import_module", "__import__"):
                    dynamic.append(module)
    assert dynamic == ["rokv.cli"]


def test_importing_every_client_module_loads_no_other_layer() -> None:
    client = sorted(m for m in installed_modules() if layer_of(m) == CLIENT and not m.endswith("__main__"))
    code = (
        "import importlib, sys\n"
        f"for name in {client!r}:\n"
        "    importlib.import_module(name)\n"
        "import rokv.cli\n"
        "rokv.cli.build_parser()\n"  # the bench command is added lazily
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=scaled(60)
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split()
    assert "rokv.bench" in loaded and "rokv.loadgen" in loaded
    assert [m for m in loaded if layer_of(m) not in (None, CLIENT)] == []


def test_benchmarks_use_only_public_rokv_names_and_nothing_of_the_tests() -> None:
    wrong = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if '"tests"' in text or "'tests'" in text:
            wrong.append(f"{path.name}: puts tests/ on its path")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in ("tests", "support", "conftest"):
                    wrong.append(f"{path.name}:{node.lineno}: imports {node.module}")
                if node.module.startswith("rokv"):
                    wrong += [
                        f"{path.name}:{node.lineno}: imports {node.module}.{alias.name}"
                        for alias in node.names
                        if alias.name.startswith("_")
                    ]
            elif isinstance(node, ast.Import):
                wrong += [f"{path.name}:{node.lineno}: imports {a.name}" for a in node.names if a.name == "support"]
    assert wrong == []
