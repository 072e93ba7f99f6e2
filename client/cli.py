"""``rokv``: look keys up from the shell, and run the dataset and pool tools.

Exit statuses are :class:`rokv.exitcodes.Exit` for every command.

The commands on the server's side (``build``, ``inspect``, ``verify`` in
``rokv.worker``; ``deploy``, ``status`` and ``top`` in ``rokv.ops``) need the ``server``
extra (numpy, supervisor, prometheus_client): this module only names them,
and imports their code when one of them runs, so ``import rokv`` and ``rokv
get`` never load server code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import BinaryIO

from rokv.core import first_invalid, resolve_endpoint
from rokv.endpoints import PROCESS_TRANSPORTS, check_endpoints, endpoints_argument
from rokv.errors import DamagedValue, InvalidKey, KeyNotFound, ProtocolError, ServiceUnavailable
from rokv.exitcodes import Exit, epilog, overview
from rokv.sync import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Client

#: Commands whose code is server code: name -> (module, one-line help). The
#: module's ``add_commands(subparsers)`` defines their full options.
SERVER_COMMANDS = {
    "build": ("rokv.worker.build", "compile a .json/.jsonl dataset into a .rokv file"),
    "inspect": ("rokv.worker.build", "print a .rokv file's header as JSON"),
    "verify": ("rokv.worker.build", "check a .rokv file's digest"),
    "deploy": ("rokv.ops.deploy", "switch the supervised workers to a new .rokv file, one at a time, with rollback"),
    "top": ("rokv.ops.top", "a live view of the pool from its hosts' metrics"),
    "status": ("rokv.ops.status", "exit 0 when every program of the pool runs and every worker answers, else 3"),
}
#: Third-party modules only the server extra installs.
SERVER_DEPENDENCIES = ("numpy", "supervisor", "prometheus_client")

# json.dumps leaves these unescaped with ensure_ascii=False, yet some line
# readers (Python's str.splitlines among them) break lines on them.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_line(value: str | None) -> str:
    text = json.dumps(value, ensure_ascii=False)
    for char, escape in _LINE_BREAKS.items():
        text = text.replace(char, escape)
    return text


def _out(text: str) -> None:
    # Bytes, so a value prints exactly whatever the locale's encoding is.
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape") + b"\n")


def _err(text: str) -> None:
    sys.stderr.write(f"rokv: {text}\n")


def connect(args: argparse.Namespace) -> Client:
    """A Client from the common options; bad values are a usage error (exit 2)."""
    try:
        # $ROKV_ENDPOINT too must name another process (the option is checked by argparse).
        endpoint = check_endpoints(resolve_endpoint(args.endpoint), transports=PROCESS_TRANSPORTS)
        return Client(endpoint, timeout=args.timeout, retries=args.retries)
    except ValueError as exc:
        _err(f"error: {exc}")
        raise SystemExit(Exit.USAGE) from None


def cmd_get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        _out(client.get(args.key))
    return Exit.OK


def read_keys(stream: BinaryIO) -> tuple[list[str], list[int]]:
    """The keys in ``stream``, one a line, with surrounding white space
    stripped and blank lines skipped; and the line number of each key."""
    keys: list[str] = []
    lines: list[int] = []
    # Bytes decoded leniently: a stray byte makes an invalid key, named in
    # the error, rather than a UnicodeDecodeError.
    for number, raw in enumerate(stream, 1):
        key = raw.decode("utf-8", "surrogateescape").strip()
        if key:
            keys.append(key)
            lines.append(number)
    return keys, lines


def cmd_get_many(args: argparse.Namespace) -> int:
    lines: list[int] | None = None
    keys = args.keys
    if "-" in keys:
        if len(keys) != 1:
            _err("error: give keys as arguments or - for standard input, not both")
            return Exit.USAGE
        keys, lines = read_keys(sys.stdin.buffer)
    with connect(args) as client:
        try:
            # Every key checked here first: an invalid one is named at once,
            # even when the service is down.
            invalid = first_invalid(keys)
            if invalid is not None:
                raise invalid
            values = client.get_many(keys)
        except InvalidKey as exc:
            # keys[N] counts keys, not lines: say the line of standard input.
            if lines is not None and exc.index is not None and exc.index < len(lines):
                raise InvalidKey(f"line {lines[exc.index]}: {exc.reason}", exc.key) from None
            raise
    sys.stdout.buffer.write("".join(_json_line(v) + "\n" for v in values).encode("utf-8"))
    return Exit.NO if None in values else Exit.OK


def cmd_ping(args: argparse.Namespace) -> int:
    with connect(args) as client:
        _out(json.dumps(client.ping(), sort_keys=True))
    return Exit.OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from rokv.security import default_key_dir, make_key_pair

    folder = args.dir if args.dir is not None else default_key_dir()
    try:
        public, secret = make_key_pair(folder, args.name)
    except (ValueError, OSError) as exc:  # a bad name (KeyNameError), a key that exists, an unwritable folder
        _err(str(exc))
        return Exit.USAGE
    _out(f"public key: {public}\nsecret key: {secret}")
    return Exit.OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoint",
        default=None,
        type=endpoints_argument(),
        help="broker frontend, or several brokers comma-separated (default: $ROKV_ENDPOINT, else tcp://127.0.0.1:5555)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"seconds to wait for each try (default: {DEFAULT_TIMEOUT} s, doubling on each retry)",
    )
    common.add_argument(
        "--retries", type=int, default=None, help=f"extra tries after a timeout (default {DEFAULT_RETRIES})"
    )
    parser = argparse.ArgumentParser(
        prog="rokv",
        description="Look up values by UUIDv4 key in a rokv service.",
        epilog=overview(),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_get = sub.add_parser(
        "get",
        parents=[common],
        help="print the value of one key",
        description="Print the value of KEY exactly as stored.",
        epilog=epilog("rokv get"),
    )
    p_get.add_argument("key", metavar="KEY")
    p_get.set_defaults(run=cmd_get)
    p_many = sub.add_parser(
        "get-many",
        parents=[common],
        help="print the values of several keys, one JSON string (or null) a line",
        description="Print one line per KEY, in order: its value as a JSON string, or null when not found. "
        "Give - instead of keys to read them from standard input, one a line (white space around a key is "
        "stripped, blank lines are skipped): for more keys than a command line holds. "
        "When a key is invalid, nothing is printed.",
        epilog=epilog("rokv get-many"),
    )
    p_many.add_argument("keys", metavar="KEY", nargs="+", help="a key; or - to read keys from standard input")
    p_many.set_defaults(run=cmd_get_many)
    p_ping = sub.add_parser(
        "ping",
        parents=[common],
        help="describe the worker that answers, as JSON",
        description="Print, as JSON, the id, pid, host and key count of the worker that answered.",
        epilog=epilog("rokv ping"),
    )
    p_ping.set_defaults(run=cmd_ping)
    p_keygen = sub.add_parser(
        "keygen",
        help="make a CurveZMQ key pair for the broker, a client or a worker",
        description="Write NAME.key (public: copy it into the broker's allow-list folder, or give it to "
        "clients and workers as ROKV_BROKER_KEY) and NAME.key_secret (private, mode 0600) into --dir. "
        "NAME must not be empty, start with '.', or contain '/', '\\' or '..'. Keep keys out of source "
        "checkouts: the default folder is in your configuration directory.",
        epilog=epilog("rokv keygen"),
    )
    p_keygen.add_argument("name", metavar="NAME")
    p_keygen.add_argument(
        "--dir",
        default=None,
        help="folder to write into, created with mode 0700 if missing "
        "(default: $XDG_CONFIG_HOME/rokv/keys, else ~/.config/rokv/keys)",
    )
    p_keygen.set_defaults(run=cmd_keygen)
    # bench is client code in a module of its own; the server commands are
    # only named here (see SERVER_COMMANDS).
    from rokv.bench import add_command as add_bench_command

    add_bench_command(sub, common)
    for name, (_, summary) in SERVER_COMMANDS.items():
        # Listed for --help only: main() hands these commands, with all their
        # arguments, to their own parser once their module is loaded.
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def run_server_command(name: str, argv: list[str]) -> int:
    """Load a server command's module, parse ``argv`` with its own parser
    and run it; a missing server dependency is named with the extra that
    brings it."""
    try:
        module = importlib.import_module(SERVER_COMMANDS[name][0])
        parser = argparse.ArgumentParser(prog="rokv")
        module.add_commands(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args([name, *argv])
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except ModuleNotFoundError as exc:
        if exc.name not in SERVER_DEPENDENCIES:
            raise
        _err(f"rokv {name} needs {exc.name}, which comes with the server extra: pip install 'rokv[server]'")
        return Exit.USAGE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SERVER_COMMANDS:
        return run_server_command(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyNotFound as exc:
        _err(str(exc))
        return Exit.NO
    except InvalidKey as exc:
        _err(str(exc))
        return Exit.USAGE
    except ServiceUnavailable as exc:
        _err(str(exc))
        return Exit.UNAVAILABLE
    except DamagedValue as exc:  # not a refusal: the server could not answer it
        _err(str(exc))
        return Exit.REFUSED
    except ProtocolError as exc:
        _err(f"request refused: {exc}")
        return Exit.REFUSED


if __name__ == "__main__":
    sys.exit(main())
