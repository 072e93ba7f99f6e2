"""The exit statuses of every rokv program, in one table.

:class:`Exit` names each status once, with the same kind of outcome whatever
the program; :data:`PROGRAMS` says which statuses each program (every
``rokv`` command and every daemon) uses, in its own words. Every ``--help``
epilog is built from it (:func:`epilog`), and so is the table in
docs/operations.md (:func:`markdown_table`; a test keeps the two equal):

    python -m rokv.exitcodes        # prints the Markdown table
"""

from __future__ import annotations

from enum import IntEnum, unique


@unique
class Exit(IntEnum):
    """What a rokv program's exit status means (:data:`MEANINGS` says it in words)."""

    OK = 0
    NO = 1
    USAGE = 2
    UNAVAILABLE = 3
    REFUSED = 4
    ROLLBACK_FAILED = 5


#: Each status: a word or two (``rokv --help``) and its meaning for every program.
MEANINGS: dict[Exit, tuple[str, str]] = {
    Exit.OK: (
        "done",
        "done: found, built, intact, deployed, serving, every answer right; a daemon stopped by SIGTERM or SIGINT",
    ),
    Exit.NO: (
        "the answer is no (not found, refused, wrong)",
        "the answer is no: a key not found, a source refused, a file corrupt, a wrong answer, a deploy refused "
        "or rolled back; a daemon that cannot serve (its dataset refused, its port taken, its proxy failed)",
    ),
    Exit.USAGE: (
        "bad usage",
        "bad usage or setting: an unknown option, a malformed endpoint, an invalid key, a bad `ROKV_*` value, "
        "a command without the extra it needs",
    ),
    Exit.UNAVAILABLE: (
        "no reply",
        "no reply, or not everything serving: the service (or supervisord) unreachable, some request "
        "unanswered, a program of the pool down",
    ),
    Exit.REFUSED: (
        "request refused",
        "the server refused the request (`bad_request`, `unsupported_version`) or a key's stored value is damaged "
        "(`damaged_value`)",
    ),
    Exit.ROLLBACK_FAILED: (
        "deploy could not roll back",
        "`rokv deploy` failed and could not put the pool back: act by hand",
    ),
}


#: Program -> the statuses it exits with and what each means for it. The
#: ``rokv`` commands first, then the daemons.
PROGRAMS: dict[str, dict[Exit, str]] = {
    "rokv get": {
        Exit.OK: "found",
        Exit.NO: "not found",
        Exit.USAGE: "invalid key or bad usage",
        Exit.UNAVAILABLE: "service unavailable",
        Exit.REFUSED: "request refused by the server, or the key's value damaged",
    },
    "rokv get-many": {
        Exit.OK: "all found",
        Exit.NO: "some not found",
        Exit.USAGE: "an invalid key or bad usage",
        Exit.UNAVAILABLE: "service unavailable",
        Exit.REFUSED: "request refused by the server, or a key's value damaged",
    },
    "rokv ping": {
        Exit.OK: "answered",
        Exit.USAGE: "bad usage",
        Exit.UNAVAILABLE: "service unavailable",
        Exit.REFUSED: "request refused by the server",
    },
    "rokv keygen": {
        Exit.OK: "written",
        Exit.USAGE: "a key file exists or cannot be written, or bad usage",
    },
    "rokv bench": {
        Exit.OK: "every answer right",
        Exit.NO: "some answer wrong",
        Exit.USAGE: "bad usage or a dataset that cannot be read",
        Exit.UNAVAILABLE: "some request got no answer or was refused (none wrong)",
    },
    "rokv build": {
        Exit.OK: "built",
        Exit.NO: "SRC refused or OUT cannot be written",
        Exit.USAGE: "bad usage or the server extra missing",
    },
    "rokv inspect": {
        Exit.OK: "printed",
        Exit.NO: "not a readable .rokv file",
        Exit.USAGE: "bad usage or the server extra missing",
    },
    "rokv verify": {
        Exit.OK: "intact",
        Exit.NO: "corrupt or unreadable",
        Exit.USAGE: "bad usage or the server extra missing",
    },
    "rokv deploy": {
        Exit.OK: "deployed or nothing to do",
        Exit.NO: "refused or failed and rolled back (the old version serves)",
        Exit.USAGE: "bad usage or the server extra missing",
        Exit.UNAVAILABLE: "supervisord or the service unreachable (nothing changed)",
        Exit.ROLLBACK_FAILED: "failed and could not roll back (act by hand)",
    },
    "rokv status": {
        Exit.OK: "every program of the pool RUNNING and every worker answering",
        Exit.USAGE: "bad usage, no such supervisord.conf, or the server extra missing",
        Exit.UNAVAILABLE: "something not serving (named, with the end of its log), or supervisord unreachable",
    },
    "rokv top": {
        Exit.OK: "done (or stopped with Ctrl-C)",
        Exit.USAGE: "bad usage or prometheus_client missing",
        Exit.UNAVAILABLE: "(with --once) a host did not answer",
    },
    "rokv-broker": {
        Exit.OK: "stopped by SIGTERM or SIGINT",
        Exit.NO: "cannot serve: an endpoint cannot be bound, a key file is bad, or the proxy failed",
        Exit.USAGE: "bad usage or setting",
    },
    "rokv-worker": {
        Exit.OK: "stopped by SIGTERM or SIGINT",
        Exit.NO: "cannot serve: the dataset is refused, a key file is bad, or an endpoint cannot be used",
        Exit.USAGE: "bad usage or setting",
    },
    "rokv-pool": {
        Exit.OK: "stopped by supervisord",
        Exit.NO: "supervisord refused the generated configuration",
        Exit.USAGE: "a bad ROKV_* setting (nothing started), or the server extra missing",
    },
    "rokv-http": {
        Exit.OK: "stopped by SIGTERM or SIGINT (requests in flight answered)",
        Exit.NO: "the server could not start (its port taken, say)",
        Exit.USAGE: "bad usage or setting, or the http extra missing",
    },
    "rokv-metrics": {
        Exit.OK: "stopped by SIGTERM or SIGINT",
        Exit.NO: "cannot serve: the address cannot be bound, or the folder cannot be used",
        Exit.USAGE: "bad usage or setting, or the server extra missing",
    },
}


def epilog(program: str) -> str:
    """The ``--help`` epilog of ``program``: ``exit codes: 0 found, 1 ...``."""
    return "exit codes: " + ", ".join(f"{int(code)} {meaning}" for code, meaning in PROGRAMS[program].items())


def overview() -> str:
    """The ``rokv --help`` epilog: every status in a word or two."""
    return (
        "exit codes: "
        + ", ".join(f"{int(code)} {word}" for code, (word, _) in MEANINGS.items())
        + "; each command's --help says what each means for it"
    )


def markdown_table() -> str:
    """The exit codes of docs/operations.md, as Markdown: every status with
    its meaning and the programs that use it, then what each status means
    for each program."""
    everyone = len(PROGRAMS)
    rows = ["| code | meaning | programs |", "|---|---|---|"]
    for code, (_, meaning) in MEANINGS.items():
        users = [name for name, codes in PROGRAMS.items() if code in codes]
        listed = "all" if len(users) == everyone else ", ".join(f"`{name}`" for name in users)
        rows.append(f"| {int(code)} | {meaning} | {listed} |")
    rows += ["", "| program | " + " | ".join(str(int(code)) for code in Exit) + " |", "|---" * (len(Exit) + 1) + "|"]
    for name, codes in PROGRAMS.items():
        rows.append(f"| `{name}` | " + " | ".join(codes.get(code, "") for code in Exit) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
