"""The ``rokv`` command: output and exit codes as a shell script sees them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.procs import REPO, Stack, child_env, free_port, scaled

MISSING = "11111111-2222-4333-8444-555555555555"


def rokv_command() -> list[str]:
    """The installed console script next to this Python, else the module."""
    script = Path(sys.executable).parent / "rokv"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rokv"]


def rokv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*rokv_command(), *args], cwd=REPO, env=env or child_env(), capture_output=True, timeout=scaled(30)
    )


def test_get_prints_the_value_and_exits_0(stack: Stack, example: dict[str, str]) -> None:
    key = next(iter(example))
    result = rokv("get", key, "--endpoint", stack.frontend, "--timeout", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == example[key] + "\n"


def test_the_endpoint_comes_from_rokv_endpoint(stack: Stack, example: dict[str, str]) -> None:
    key = next(iter(example))
    result = rokv("get", key, env=child_env(ROKV_ENDPOINT=stack.frontend))
    assert (result.returncode, result.stdout.decode()) == (0, example[key] + "\n")


def test_get_of_a_missing_key_exits_1_with_a_message(stack: Stack) -> None:
    result = rokv("get", MISSING, "--endpoint", stack.frontend)
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"not found" in result.stderr


def test_get_of_an_invalid_key_exits_2_with_the_reason(stack: Stack) -> None:
    result = rokv("get", "not-a-uuid", "--endpoint", stack.frontend)
    assert result.returncode == 2
    assert b"is not a UUID" in result.stderr


def test_an_unreachable_service_exits_3() -> None:
    result = rokv("get", MISSING, "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.2", "--retries", "0")
    assert result.returncode == 3
    assert b"no reply" in result.stderr


def test_get_many_prints_one_json_line_per_key(stack: Stack, example: dict[str, str]) -> None:
    k1, k2 = list(example)[:2]
    result = rokv("get-many", k1, MISSING, k2, "--endpoint", stack.frontend)
    assert result.returncode == 1  # one was missing
    lines = result.stdout.decode().splitlines()
    assert [json.loads(line) for line in lines] == [example[k1], None, example[k2]]
    found = rokv("get-many", k2, k1, "--endpoint", stack.frontend)
    assert found.returncode == 0
    assert [json.loads(line) for line in found.stdout.decode().splitlines()] == [example[k2], example[k1]]


def test_get_many_with_an_invalid_key_exits_2(stack: Stack, example: dict[str, str]) -> None:
    result = rokv("get-many", next(iter(example)), "bogus", "--endpoint", stack.frontend)
    assert result.returncode == 2
    assert b"bogus" in result.stderr


def test_get_many_reads_50000_keys_from_standard_input(stack: Stack, example: dict[str, str]) -> None:
    # As arguments, 50,000 keys exceed what a command line holds.
    keys = [*list(example) * 5][:49_990] + [MISSING] * 10
    text = "".join(f"  {k}\t\r\n" + ("\n \n" if i % 1000 == 0 else "") for i, k in enumerate(keys))
    result = subprocess.run(
        [*rokv_command(), "get-many", "-", "--endpoint", stack.frontend],
        input=text.encode(),
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        timeout=scaled(60),
    )
    assert result.returncode == 1, result.stderr  # the missing ones
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 50_000
    assert [json.loads(line) for line in lines] == [example.get(k) for k in keys]


def test_get_many_from_standard_input_names_the_line_of_an_invalid_key(stack: Stack, example: dict[str, str]) -> None:
    text = f"{next(iter(example))}\n\n{MISSING}\n  bogus  \n"
    result = subprocess.run(
        [*rokv_command(), "get-many", "-", "--endpoint", stack.frontend],
        input=text.encode(),
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        timeout=scaled(30),
    )
    assert result.returncode == 2 and result.stdout == b""
    assert (
        result.stderr.decode() == 'rokv: line 4: "bogus" is not a UUID '
        "(expected 8-4-4-4-12 or 32 hex digits, optionally in braces or after urn:uuid:)\n"
    )
    empty = subprocess.run(
        [*rokv_command(), "get-many", "-", "--endpoint", stack.frontend],
        input=b"\n  \n",
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        timeout=scaled(30),
    )
    assert (empty.returncode, empty.stdout) == (0, b"")
    mixed = rokv("get-many", MISSING, "-", "--endpoint", stack.frontend)
    assert mixed.returncode == 2 and b"not both" in mixed.stderr


def test_values_with_line_breaks_stay_on_one_line(make_stack, tmp_path: Path) -> None:
    key = "8a35eb59-62b3-481c-8875-1f248df4c952"
    value = "a\nb\u2028c\u2029d\x85e\x00f \u00e9\U0001f600 "
    data = tmp_path / "odd.json"
    data.write_text(json.dumps({key: value}), encoding="utf-8")
    stack = make_stack(workers=1, data=data).wait_ready()
    many = rokv("get-many", key, "--endpoint", stack.frontend)
    assert many.returncode == 0
    assert many.stdout.count(b"\n") == 1
    assert json.loads(many.stdout.decode()) == value
    one = rokv("get", key, "--endpoint", stack.frontend)
    assert one.stdout == (value + "\n").encode()


def test_ping_prints_the_worker_as_json(stack: Stack) -> None:
    result = rokv("ping", "--endpoint", stack.frontend)
    assert result.returncode == 0
    info = json.loads(result.stdout)
    assert info["keys"] == 10_000 and info["pid"] in {w.pid for w in stack.workers}


@pytest.mark.parametrize("args", [["--help"], ["get", "--help"], ["get-many", "--help"], ["ping", "--help"]])
def test_help_explains_the_options(args: list[str]) -> None:
    result = rokv(*args)
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "usage: rokv" in text
    if args[0] != "--help":
        assert "--endpoint" in text and "--timeout" in text and "ROKV_ENDPOINT" in text
    if args[0] == "get-many":
        assert "standard input" in text


def test_bad_usage_exits_2() -> None:
    assert rokv().returncode == 2
    assert rokv("get").returncode == 2
    assert rokv("get", MISSING, "--timeout", "soon").returncode == 2
    assert rokv("get", MISSING, "--timeout", "0").returncode == 2


def keygen_env(tmp_path: Path, xdg: bool) -> dict[str, str]:
    env = child_env(HOME=str(tmp_path / "home"))
    env.pop("XDG_CONFIG_HOME", None)
    if xdg:
        env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    return env


@pytest.mark.parametrize("xdg", [True, False], ids=["xdg-config-home", "home"])
def test_keygen_writes_outside_the_checkout_by_default(tmp_path: Path, xdg: bool) -> None:
    in_checkout = sorted(REPO.glob("keys/billing.key*"))
    result = rokv("keygen", "billing", env=keygen_env(tmp_path, xdg))
    assert result.returncode == 0, result.stderr
    folder = tmp_path / ("xdg" if xdg else "home/.config") / "rokv" / "keys"
    assert sorted(folder.iterdir()) == [folder / "billing.key", folder / "billing.key_secret"]
    assert str(folder / "billing.key_secret") in result.stdout.decode()
    assert sorted(REPO.glob("keys/billing.key*")) == in_checkout, "keygen wrote into the checkout"


def test_keygen_writes_into_dir_when_given(tmp_path: Path) -> None:
    result = rokv("keygen", "broker", "--dir", str(tmp_path / "k"), env=keygen_env(tmp_path, True))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k" / "broker.key_secret").exists() and not (tmp_path / "xdg").exists()


@pytest.mark.parametrize("name", ["", "../broker", "a/b", "a\\b", "..", ".hidden"])
def test_keygen_refuses_names_that_leave_the_folder_or_hide(tmp_path: Path, name: str) -> None:
    result = rokv("keygen", name, "--dir", str(tmp_path / "k"), env=keygen_env(tmp_path, True))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.startswith("rokv: ") and "key name" in err and "Traceback" not in err
    assert not (tmp_path / "k").exists() and not (tmp_path / "broker.key_secret").exists()


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    env = keygen_env(tmp_path, True)
    assert rokv("keygen", "w", "--dir", str(tmp_path)).returncode == 0
    result = rokv("keygen", "w", "--dir", str(tmp_path), env=env)
    assert result.returncode == 2 and b"exists already" in result.stderr


EXIT_CODES = {
    "get": "0 found, 1 not found, 2 invalid key or bad usage, 3 service unavailable, 4 request refused",
    "get-many": (
        "0 all found, 1 some not found, 2 an invalid key or bad usage, 3 service unavailable, 4 request refused"
    ),
    "ping": "0 answered, 2 bad usage, 3 service unavailable, 4 request refused",
    "keygen": "0 written, 2 a key file exists or cannot be written, or bad usage",
    "top": "0 done (or stopped with Ctrl-C), 2 bad usage or prometheus_client missing, 3 (with --once) a host "
    "did not answer",
    "bench": "0 every answer right, 1 some answer wrong, 2 bad usage or a dataset that cannot be read, 3 some",
    "build": "0 built, 1 SRC refused or OUT cannot be written, 2 bad usage",
    "inspect": "0 printed, 1 not a readable .rokv file, 2 bad usage",
    "verify": "0 intact, 1 corrupt or unreadable, 2 bad usage",
    "deploy": "0 deployed or nothing to do, 1 refused or failed and rolled back (the old version serves), "
    "2 bad usage or the server extra missing, 3 supervisord or the service unreachable (nothing changed), "
    "5 failed and could not roll back",
    "status": "0 every program of the pool RUNNING and every worker answering, 2 bad usage, no such "
    "supervisord.conf, or the server extra missing, 3 something not serving",
}


@pytest.mark.parametrize("command", list(EXIT_CODES))
def test_every_subcommands_help_lists_its_exit_codes(command: str) -> None:
    result = rokv(command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.decode().split())  # argparse wraps lines
    assert f"exit codes: {EXIT_CODES[command]}" in text


def test_every_subcommand_is_covered_by_the_exit_code_test() -> None:
    from rokv.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(EXIT_CODES)  # type: ignore[arg-type]  # argparse types choices loosely


DAEMONS = ("rokv-broker", "rokv-worker", "rokv-pool", "rokv-http", "rokv-metrics")


def test_one_exit_code_table_covers_every_program_and_names_each_code_once() -> None:
    from rokv.exitcodes import PROGRAMS, Exit

    assert set(PROGRAMS) == {f"rokv {c}" for c in EXIT_CODES} | set(DAEMONS)
    assert len({code.name for code in Exit}) == len({int(code) for code in Exit}) == len(Exit.__members__)
    assert Exit(1).name == "NO"  # no alias: a status has one name


@pytest.mark.parametrize("daemon", DAEMONS)
def test_every_daemons_help_lists_its_exit_codes_from_the_table(daemon: str) -> None:
    from rokv.exitcodes import epilog

    result = subprocess.run([daemon, "--help"], capture_output=True, timeout=scaled(30))
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.decode().split())
    assert " ".join(epilog(daemon).split()) in text
    assert text.count("exit codes:") == 1


def test_rokv_help_names_every_exit_code() -> None:
    from rokv.exitcodes import Exit

    text = " ".join(rokv("--help").stdout.decode().split())
    listed = text[text.index("exit codes:") :]
    for code in Exit:
        assert f"{int(code)} " in listed


def test_the_exit_code_tables_in_the_operations_manual_are_the_rendered_ones() -> None:
    from rokv.exitcodes import markdown_table

    rendered = subprocess.run(
        [sys.executable, "-m", "rokv.exitcodes"], capture_output=True, text=True, timeout=scaled(30), check=True
    ).stdout
    assert rendered == markdown_table()
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    assert markdown_table() in section
    # No other table in the section: every table line is a rendered one.
    assert [line for line in section.splitlines() if line.startswith("|")] == [
        line for line in markdown_table().splitlines() if line
    ]
