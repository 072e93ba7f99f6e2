"""``rokv deploy NEW.rokv``: switch a supervised worker pool to a new dataset
file one worker at a time, and roll back at the first failure.

The workers load a symbolic link (``--link``, default ``$ROKV_DATA``); a
deploy repoints it and restarts the workers of supervisord's group
``worker`` in turn, so all but one keep serving throughout. In order:

1. Check NEW: a full read against its digest (``rokv verify``), or with
   ``--no-verify`` its header only (``rokv inspect``: magic, version, size).
   A refusal changes nothing.
2. Read the link's target: the rollback target. It must be a readable
   ``.rokv`` file, or a rollback could not work. Unless
   ``--allow-new-keys``, look up 1000 of its keys (evenly spread) in NEW and
   refuse if fewer than half are there: a new version of the same data
   keeps most keys, the wrong export keeps none (every lookup would then
   answer "not found").
3. List the group's processes through supervisord's XML-RPC interface (the
   ``[supervisorctl] serverurl`` of ``-c FILE``); refuse if one is half-way
   (STARTING, BACKOFF, STOPPING), or if none is RUNNING. Ping through the
   broker until every RUNNING worker has answered: the service is reachable,
   and each says which file (``dataset``) and version (``digest``) it serves.
   A worker that does not load the link is refused, since repointing the
   link would not change what it serves: its path (resolved in its own
   folder when it runs on this host) is not the link, or, elsewhere, it
   serves neither the link's file nor NEW.
4. Repoint the link atomically (a new link under a temporary name, renamed
   over it), keeping its relative or absolute style.
5. First each worker that is down (STOPPED, EXITED, FATAL: a deploy killed
   with ``kill -9`` while it stopped a worker leaves it STOPPED), then each
   RUNNING worker, in name order: stop, start (supervisord waits its
   ``startsecs``), then ping until the new process (its pid) answers with
   NEW's digest. ``--timeout`` bounds each worker's switch. A deploy ends
   with every worker of the group serving NEW; ``rokv status`` then checks
   the whole pool (a note when something does not serve).
6. At the first failure (did not start, died, answered with another digest,
   or no answer in time), or on Ctrl-C, SIGTERM or SIGHUP (a closed
   terminal; under ``nohup`` a deploy goes on instead): repoint the link to its
   old target, restart the failed worker and every worker already switched
   (each waited for until it answers with the old digest), stop again those
   that were down before, then exit 1 naming the worker, what failed and the
   end of its log. Workers not yet reached are never touched.

If the link already points at NEW (a deploy that was cut short), the workers
that are down or do not yet serve NEW's digest are (re)started; with none
left, there is nothing to do. Such a run has no older file to go back to:
it stops at the first failure and exits 5.

Lines of progress go to stdout, errors to stderr after ``rokv: ``. Exit codes
are :class:`Exit`.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import importlib.util
import math
import mmap
import os
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from rokv.exitcodes import Exit, epilog
from rokv.ops import status, supervisor_rpc
from rokv.ops.status import from_worker
from rokv.ops.supervisor_rpc import Process, Refused, Supervisor, SupervisorConfigError, SupervisorUnreachable
from rokv.worker.layout import DIGEST_ALGORITHM, SUFFIX, Header, StoreError, read_header
from rokv.worker.reader import verify_store

GROUP = "worker"
DEFAULT_TIMEOUT = 60.0
#: One ping's wait for its reply; unanswered pings are simply sent again.
PING_TIMEOUT = 0.5
#: Pause between pings: enough to reach every worker quickly without adding
#: load worth measuring.
PING_INTERVAL = 0.02
#: With no reply at all for this long, the endpoint is taken to be wrong.
REACH_TIMEOUT = 5.0
#: How often a worker's state is read while waiting for its answer.
STATE_INTERVAL = 1.0
LOG_LINES = 10
#: Keys of the serving file looked for in NEW (evenly spread): enough to
#: tell a share of 50% within a few points.
KEY_SAMPLE = 1000
#: The least share of those a new version must hold, unless --allow-new-keys.
MIN_KEY_SHARE = 0.5
#: States in which a process is on its way up or down: its dataset is
#: whatever the link held when it spawned, so a deploy would race with it.
_TRANSITIONS = {"STARTING", "BACKOFF", "STOPPING"}
#: States from which supervisord can start a process.
_DOWN = {"STOPPED", "EXITED", "FATAL"}


class Stop(Exception):
    """Ends the command with ``code`` and ``message`` (to stderr)."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


class StepFailed(Exception):
    """One worker's switch failed: ``reason``, and its log's last lines."""

    def __init__(self, reason: str, log: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.log = log or []


@dataclass(frozen=True)
class Answer:
    """What a worker's ping said about itself."""

    digest: str | None
    dataset: str | None


def digest_of(header: Header) -> str:
    return f"{DIGEST_ALGORITHM}:{header.digest_hex}"


def short(digest: str | None) -> str:
    """A digest cut to 16 hex digits for progress lines (summaries print it whole)."""
    if not digest:
        return "no digest (not a .rokv file)"
    name, _, hexdigits = digest.partition(":")
    return f"{name}:{hexdigits[:16]}..." if len(hexdigits) > 16 else digest


def say(text: str) -> None:
    """A progress line. Never raises: a closed pipe or terminal must not stop
    a deploy half-way."""
    try:
        print(text, flush=True)
    except (OSError, ValueError):
        pass


def warn(text: str) -> None:
    """An error or note on stderr, after ``rokv: ``. Never raises, as :func:`say`."""
    try:
        sys.stderr.write(f"rokv: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# ------------------------------------------------------------------ the link


def check_link(link: str) -> str:
    """The link's current target, as written in it.

    Raises:
        Stop(USAGE): not a symbolic link, or not named ``*.rokv``.
    """
    if not os.path.islink(link):
        what = "is not a symbolic link" if os.path.lexists(link) else "does not exist"
        raise Stop(
            Exit.USAGE,
            f"{link} {what}: deploy repoints the symbolic link the workers load "
            f"(their ROKV_DATA); see docs/operations.md 'Compiled datasets and deploying a new version'",
        )
    if not link.lower().endswith(SUFFIX):
        raise Stop(Exit.USAGE, f"{link}: workers pick the format by the name they load: it must end in {SUFFIX}")
    return os.readlink(link)


def target_for(link: str, new: str, old_target: str) -> str:
    """What the link should hold to name ``new``: relative to the link's
    folder if its current target is relative, else absolute; the real file
    either way (not a link to it), so the deploy pins what it checked."""
    real = os.path.realpath(new)
    if os.path.isabs(old_target):
        return real
    return os.path.relpath(real, os.path.realpath(os.path.dirname(os.path.abspath(link))))


def repoint(link: str, target: str) -> None:
    """Make ``link`` hold ``target``, atomically: a reader (a worker starting)
    sees the old or the new target, never no link.

    Raises:
        OSError: the folder is not writable, or the rename failed.
    """
    folder = os.path.dirname(os.path.abspath(link))
    tmp = os.path.join(folder, f".{os.path.basename(link)}.deploy-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        os.unlink(tmp)
        raise
    # The rename survives a crash of the host: after a reboot supervisord
    # starts the workers on what the deploy last chose.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ the pool


class Pool:
    """The workers of one supervisord, reached through its XML-RPC interface
    for restarts and through the broker for pings."""

    def __init__(self, supervisor: Supervisor, endpoint: str, link: str, timeout: float) -> None:
        from rokv.sync import Client

        self.supervisor = supervisor
        self.endpoint = endpoint
        self.link = link
        self.timeout = timeout
        self._client = Client(endpoint, timeout=PING_TIMEOUT, retries=0)
        # Workers on other hosts may share the broker (and pids); this
        # supervisord's own are on this host when it is reached by socket.
        self._host = status.local_host(supervisor)
        #: Whether this supervisord's processes run on this host.
        self.local = self._host is not None

    def close(self) -> None:
        self._client.close()

    def ping(self) -> dict[str, Any] | None:
        """One ping's reply (from whichever worker the broker picked), or None."""
        from rokv.errors import RokvError

        try:
            return self._client.ping()
        except RokvError:
            return None

    def _from(self, info: dict[str, Any], pid: int) -> bool:
        return from_worker(info, pid, self._host)

    def survey(self, workers: list[Process]) -> dict[str, Answer]:
        """Ping until every one of ``workers`` has answered; what each said.

        Raises:
            Stop(UNREACHABLE): no reply at all within REACH_TIMEOUT, or some
                worker silent for ``timeout`` seconds.
        """
        result = status.survey(self.ping, workers, self._host, self.timeout, min(REACH_TIMEOUT, self.timeout))
        if not result.replied and workers:
            raise Stop(
                Exit.UNAVAILABLE,
                f"no answer from {self.endpoint} in {result.waited:.0f} s: is it the "
                f"broker these workers serve (--endpoint, $ROKV_ENDPOINT)? "
                f"Nothing was changed.",
            )
        silent = [w for w in workers if w.name not in result.answers]
        if silent:
            raise Stop(
                Exit.UNAVAILABLE,
                ", ".join(f"{w.name} (pid {w.pid})" for w in silent)
                + f" did not answer through {self.endpoint} in {self.timeout:.0f} s (is it the broker these "
                f"workers serve?). Nothing was changed.",
            )
        return {name: Answer(info.get("digest"), info.get("dataset")) for name, info in result.answers.items()}

    def restart(self, worker: Process, digest: str) -> tuple[int, float]:
        """Stop and start ``worker``, then wait until its new process answers
        with ``digest``; its new pid and the seconds it took.

        Raises:
            StepFailed: it did not stop or start, died, answered with
                another digest, or did not answer within ``timeout``.
        """
        started = time.monotonic()
        deadline = started + self.timeout
        name = worker.name
        try:
            self._stop(name, deadline)
            log_at = self.supervisor.log_end(name)  # a failure shows the new process's lines only
            try:
                self.supervisor.call("supervisor.startProcess", name, True, timeout=_left(deadline))
            except Refused as exc:
                if exc.fault != "ALREADY_STARTED":
                    raise StepFailed(
                        f"did not start (supervisor: {exc.fault}{self._spawn_error(name)})",
                        self.supervisor.log_since(name, log_at, LOG_LINES),
                    ) from None
            process = self.supervisor.process(name)
            if process.state != "RUNNING":
                raise StepFailed(
                    f"is {process.state} after starting ({process.description})",
                    self.supervisor.log_since(name, log_at, LOG_LINES),
                )
            self._await(process, digest, deadline, log_at)
        except SupervisorUnreachable as exc:
            raise StepFailed(str(exc)) from None
        except Refused as exc:
            raise StepFailed(f"supervisord refused: {exc}") from None
        return process.pid, time.monotonic() - started

    def stop(self, worker: Process) -> None:
        """Stop ``worker`` (within ``timeout``) and leave it down.

        Raises:
            StepFailed: it did not stop, or supervisord did not answer.
        """
        try:
            self._stop(worker.name, time.monotonic() + self.timeout)
        except SupervisorUnreachable as exc:
            raise StepFailed(str(exc)) from None
        except Refused as exc:
            raise StepFailed(f"supervisord refused: {exc}") from None

    def _stop(self, name: str, deadline: float) -> None:
        """Stop ``name`` and return once it is down, whatever state it is in
        (a call cut short by Ctrl-C may have left it STARTING or STOPPING;
        supervisord cannot start a process that is still STOPPING)."""
        while True:
            state = self.supervisor.process(name).state
            if state in _DOWN:
                return
            if state != "STOPPING":
                try:
                    self.supervisor.call("supervisor.stopProcess", name, True, timeout=_left(deadline))
                except Refused as exc:
                    if exc.fault != "NOT_RUNNING":  # it went down meanwhile: fine
                        raise StepFailed(f"could not stop it ({exc})") from None
                continue
            _left(deadline)
            time.sleep(PING_INTERVAL)

    def _await(self, process: Process, digest: str, deadline: float, log_at: int | None) -> None:
        next_check = time.monotonic() + STATE_INTERVAL
        while True:
            info = self.ping()
            if info is not None and self._from(info, process.pid):
                if info.get("digest") == digest:
                    return
                raise StepFailed(
                    f"answers with {short(info.get('digest'))} from {info.get('dataset')}, "
                    f"not {short(digest)}: does it load {self.link}?"
                )
            now = time.monotonic()
            if now > deadline:
                raise StepFailed(
                    f"its new process (pid {process.pid}) did not answer with {short(digest)} "
                    f"within {self.timeout:g} s (--timeout)",
                    self.supervisor.log_since(process.name, log_at, LOG_LINES),
                )
            if now >= next_check:
                next_check = now + STATE_INTERVAL
                current = self.supervisor.process(process.name)
                if current.state != "RUNNING" or current.pid != process.pid:
                    raise StepFailed(
                        f"its new process (pid {process.pid}) stopped before answering "
                        f"(now {current.state}: {current.description})",
                        self.supervisor.log_since(process.name, log_at, LOG_LINES),
                    )
            time.sleep(PING_INTERVAL)

    def _spawn_error(self, name: str) -> str:
        """Why supervisord could not run the command, if that is the reason
        (else the log says why the process exited)."""
        try:
            spawnerr = self.supervisor.process(name).spawnerr
        except (Refused, SupervisorUnreachable):
            return ""
        return f": {spawnerr}" if spawnerr else ""


def _left(deadline: float) -> float:
    """Seconds to the deadline, for a call that waits on a process.

    Raises:
        StepFailed: none left.
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise StepFailed("ran out of time (--timeout)")
    return left


# ------------------------------------------------------------------ the command


@dataclass
class Options:
    new: str
    link: str
    configuration: str
    endpoint: str
    timeout: float
    verify: bool
    allow_new_keys: bool = False


def check_new(new: str, verify: bool) -> Header:
    """NEW's header, after the full check (or the header alone).

    Raises:
        Stop(FAILED): the file would not be served (the reason is the store's).
    """
    try:
        return verify_store(new) if verify else read_header(new)
    except StoreError as exc:
        raise Stop(Exit.NO, f"refused: {exc}. Nothing was changed.") from None


class _Keys:
    """The sorted 16-byte keys of a mapped ``.rokv`` file, as a sequence
    (FORMAT.md, "Keys and the bucket table"): what :mod:`bisect` needs."""

    def __init__(self, mm: mmap.mmap, header: Header) -> None:
        self._mm, self._at, self._n = mm, header.keys_offset, header.count

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> bytes:
        at = self._at + 16 * i
        return self._mm[at : at + 16]


def key_share(old: str, new: str, sample: int = KEY_SAMPLE) -> tuple[int, int]:
    """How many of ``sample`` keys of ``old`` (evenly spread over its sorted
    keys, so over the whole key space) are in ``new``: (found, sampled).
    Reads only those keys and a binary search's worth of ``new``.

    Raises:
        StoreError: either file cannot be read as a ``.rokv`` file.
    """
    with contextlib.ExitStack() as stack:
        keys = []
        for path in (old, new):
            header = read_header(path)
            f = stack.enter_context(open(path, "rb"))
            mm = stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            keys.append(_Keys(mm, header))
        old_keys, new_keys = keys
        n = len(old_keys)
        picked = {i * n // sample for i in range(sample)} if n > sample else set(range(n))
        found = 0
        for i in sorted(picked):
            key = old_keys[i]
            at = bisect.bisect_left(new_keys, key)  # a Sequence by duck typing
            found += at < len(new_keys) and new_keys[at] == key
        return found, len(picked)


def check_key_share(old: str, new: str, link: str) -> None:
    """Refuse NEW when too few keys of the serving file are in it: an export
    of another table, or of nothing, answers "not found" to every lookup.

    Raises:
        Stop(NO): below :data:`MIN_KEY_SHARE` (the message says the share).
    """
    try:
        found, sampled = key_share(old, new)
    except (StoreError, OSError, ValueError):
        return  # both were checked already; a file that changed meanwhile fails later, with a rollback
    if sampled == 0 or found >= MIN_KEY_SHARE * sampled:
        return
    raise Stop(
        Exit.NO,
        f"refused: only {found} of {sampled} keys sampled from the serving file ({link} -> {old}), "
        f"{100 * found / sampled:.1f}%, are in {new}; at least {100 * MIN_KEY_SHARE:.0f}% are expected of a "
        f"new version of the same data. Is it the right file? Deploy it anyway with --allow-new-keys. "
        f"Nothing was changed.",
    )


def deploy(opts: Options) -> Exit:
    """Run a deploy (the module docstring says how); the outcome's exit code.

    Raises:
        Stop: refused before any change, or supervisord/the service
            unreachable (with the code and message to print).
    """
    old_target = check_link(opts.link)
    started = time.monotonic()
    new_header = check_new(opts.new, opts.verify)
    new_digest = digest_of(new_header)
    say(
        f"{opts.new}: {'verified' if opts.verify else 'header checked (--no-verify)'}: "
        f"{new_header.count} keys, digest {new_digest}"
    )
    if new_header.count == 0:
        warn(
            "note: it holds no keys: workers refuse it (and the deploy rolls back) unless they run "
            "with ROKV_ALLOW_EMPTY=1"
        )
    resume = os.path.realpath(opts.link) == os.path.realpath(opts.new)
    if resume:
        old_digest = None
    else:
        try:
            old_digest = digest_of(read_header(os.path.realpath(opts.link)))
        except StoreError as exc:
            raise Stop(
                Exit.NO,
                f"refused: {opts.link} points at {old_target}, which cannot be served "
                f"({exc}): a rollback to it would fail. Nothing was changed.",
            ) from None
        if not opts.allow_new_keys:
            check_key_share(os.path.realpath(opts.link), opts.new, opts.link)

    try:
        supervisor = Supervisor.from_config(opts.configuration)
    except SupervisorConfigError as exc:
        raise Stop(Exit.USAGE, str(exc)) from None
    try:
        group = supervisor.processes(GROUP)
    except SupervisorUnreachable as exc:
        raise Stop(
            Exit.UNAVAILABLE,
            f"{exc} (is it running? is -c {opts.configuration} its configuration?). Nothing was changed.",
        ) from None
    if not group:
        raise Stop(
            Exit.NO, f"supervisord at {supervisor.serverurl} has no process group {GROUP!r}. Nothing was changed."
        )
    busy = [p for p in group if p.state in _TRANSITIONS]
    if busy:
        raise Stop(
            Exit.NO,
            "refused: "
            + ", ".join(f"{p.name} is {p.state}" for p in busy)
            + f": wait until it settles (rokv status -c {opts.configuration}), then deploy. Nothing was changed.",
        )
    running = [p for p in group if p.state == "RUNNING"]
    # Down workers (a deploy cut short by kill -9 leaves one STOPPED) are
    # started on the link's file too: a deploy ends with every worker on it.
    down = [p for p in group if p.state in _DOWN]
    if not running and not resume:
        raise Stop(
            Exit.NO,
            f"refused: no {GROUP} process is RUNNING under supervisord at "
            f"{supervisor.serverurl}, so none would keep serving. Nothing was changed. "
            f"If the pool is down, point {opts.link} at a good file by hand and start "
            f"the workers (supervisorctl -c {opts.configuration} start {GROUP}:*).",
        )
    for p in group:
        if p not in running and p not in down:
            warn(f"note: {p.name} is {p.state}: left alone")

    try:
        pool = Pool(supervisor, opts.endpoint, opts.link, opts.timeout)
    except ValueError as exc:  # a bad endpoint or CURVE key file, from the client
        raise Stop(Exit.USAGE, f"error: {exc}") from None
    try:
        answers = pool.survey(running)
        _check_datasets(opts.link, running, answers, pool.local, {old_digest, new_digest})
        for w in running:
            if not resume and answers[w.name].digest != old_digest:
                warn(
                    f"note: {w.name} serves {short(answers[w.name].digest)}, not {old_target}'s "
                    f"{short(old_digest)} ({opts.link} was repointed without a restart): a rollback "
                    f"would bring it to {old_target}"
                )
        if resume:
            todo = down + [w for w in running if answers[w.name].digest != new_digest]
            if not todo:
                say(
                    f"{opts.link} already points at {old_target}, and all {len(running)} workers serve "
                    f"{new_digest}: nothing to do"
                )
                return Exit.OK
            say(
                f"{opts.link} already points at {old_target}; {len(todo)} of {len(group)} workers do not "
                f"serve it yet" + (f" ({len(down)} down)" if down else "") + ": "
                "starting those (no older file to roll back to)"
            )
        else:
            todo = down + running
        if down:
            say(f"starting first what is down: {', '.join(f'{p.name} ({p.state})' for p in down)}")
        if len(running) == 1:
            warn("note: one worker only: lookups wait (clients retry) while it restarts")
        return _switch(opts, pool, todo, set(down), old_target, old_digest, new_digest, started)
    finally:
        pool.close()


def _check_datasets(
    link: str, workers: list[Process], answers: dict[str, Answer], local: bool, known: set[str | None]
) -> None:
    """Refuse when a worker does not load the link: repointing it would not
    change what that worker serves, and the deploy would end in a rollback
    that cannot work either. A worker's path relative to its own folder is
    resolved when it runs on this host; else a worker serving neither the
    link's file nor NEW (or a file that is not ``.rokv``) is refused."""
    try:
        link_stat = os.lstat(link)
    except OSError:
        return
    for w in workers:
        answer = answers[w.name]
        path = _dataset_path(answer.dataset, w.pid if local else None)
        if path is not None:
            try:
                same = os.path.samestat(os.lstat(path), link_stat)
            except OSError:
                same = False
        else:
            same = answer.digest is not None and answer.digest in known
        if not same:
            what = "" if answer.digest else " (not a .rokv file)"
            raise Stop(
                Exit.NO,
                f"refused: {w.name} loads {answer.dataset}{what}, not {link}: repointing {link} would "
                f"not change what it serves. Either give --link the path the workers load, or have them load "
                f"the link (ROKV_DATA={link} in supervisord's environment, then restart supervisord). "
                f"Nothing was changed.",
            )


def _dataset_path(dataset: str | None, pid: int | None) -> str | None:
    """A worker's dataset as an absolute path: as given, or relative to the
    folder the worker runs in (read from /proc when it runs here); None when
    that cannot be known."""
    if not dataset:
        return None
    if os.path.isabs(dataset):
        return dataset
    if pid is None:
        return None
    try:
        return os.path.join(os.readlink(f"/proc/{pid}/cwd"), dataset)
    except OSError:
        return None


def _switch(
    opts: Options,
    pool: Pool,
    todo: list[Process],
    down: set[Process],
    old_target: str,
    old_digest: str | None,
    new_digest: str,
    started: float,
) -> Exit:
    """Steps 4 to 6: repoint, (re)start one by one, roll back on failure."""
    link = opts.link
    new_target = target_for(link, opts.new, old_target)
    switched: list[Process] = []
    current: Process | None = None
    with _sigterm_interrupts():  # from here on, a stop request rolls back
        try:
            if old_digest is not None:
                try:
                    repoint(link, new_target)
                except OSError as exc:
                    raise Stop(Exit.NO, f"cannot repoint {link}: {exc.strerror or exc}. Nothing was changed.") from None
                say(f"{link}: {old_target} -> {new_target}")
            for worker in todo:
                current = worker
                pid, took = pool.restart(worker, new_digest)
                was = f"was {worker.state}" if worker in down else f"pid {worker.pid}"
                say(f"{worker.name}: {was} -> pid {pid}, serving {short(new_digest)} after {took:.1f} s")
                switched.append(worker)
                current = None
        except Stop:
            raise  # the link could not be repointed: nothing changed
        except StepFailed as exc:
            failure = exc
        except KeyboardInterrupt:
            failure = StepFailed("interrupted (Ctrl-C, SIGTERM or SIGHUP)")
        except Exception as exc:  # noqa: BLE001 - any failure rolls back; see below
            # Once the link has moved, going back to a known state beats a
            # traceback that leaves the pool half-switched.
            failure = StepFailed(f"unexpected error: {exc!r}")
        else:
            say(f"deployed {new_target} ({new_digest}) to {len(todo)} worker(s) in {time.monotonic() - started:.1f} s")
            _health(opts, pool)
            return Exit.OK
        return _fail(opts, pool, current, failure, switched, todo, down, old_target, old_digest)


def _health(opts: Options, pool: Pool) -> None:
    """After a deploy, what ``rokv status`` says, when it is not "serving"
    (a program of the pool down, a worker silent): a note, since the
    deploy itself is done."""
    try:
        report = status.check(pool.supervisor, opts.endpoint, min(opts.timeout, status.DEFAULT_TIMEOUT))
    except (SupervisorUnreachable, ValueError) as exc:
        warn(f"note: rokv status could not check the pool after the deploy: {exc}")
        return
    if not report.ok:
        warn("note: the deploy is done, but not everything serves (rokv status):\n" + "\n".join(report.lines()))


def _fail(
    opts: Options,
    pool: Pool,
    failed: Process | None,
    failure: StepFailed,
    switched: list[Process],
    todo: list[Process],
    down: set[Process],
    old_target: str,
    old_digest: str | None,
) -> Exit:
    """Say what failed, and put the link and the workers touched back as
    they were: the running ones restarted on the old file, the ones that
    were down stopped again."""
    untouched = [w.name for w in todo if w not in switched and w is not failed]
    touched = ([failed] if failed is not None else []) + switched
    back = [w for w in touched if w not in down]
    stop = [w for w in touched if w in down]
    rolling: Process | None = None
    try:
        if failed is not None:
            warn(f"deploy of {opts.new} failed at {failed.name}: {failure.reason}")
            _show_log(failed.name, failure.log)
        else:
            warn(f"deploy of {opts.new} stopped: {failure.reason}")
        if old_digest is None:
            warn(
                f"NOT ROLLED BACK: {opts.link} already pointed at {old_target} before this run: there is no "
                f"older file to go back to. Switched: {', '.join(w.name for w in switched) or 'none'}; "
                f"not reached: {', '.join(untouched) or 'none'}. See rokv status -c {opts.configuration}."
            )
            return Exit.ROLLBACK_FAILED
        say(f"rolling back: {opts.link} -> {old_target}, then {len(touched)} worker(s)")
        try:
            repoint(opts.link, old_target)
        except OSError as exc:
            raise StepFailed(f"cannot repoint {opts.link} to {old_target}: {exc}") from None
        for rolling in stop:
            pool.stop(rolling)
            say(f"{rolling.name}: stopped again (it was {rolling.state} before the deploy)")
        for rolling in back:
            pid, took = pool.restart(rolling, old_digest)
            say(f"{rolling.name}: back on {short(old_digest)}, pid {pid}, after {took:.1f} s")
    except (StepFailed, KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - say so, never a traceback
        where = f" at {rolling.name}" if rolling is not None else ""
        if isinstance(exc, StepFailed):
            warn(f"ROLLBACK FAILED{where}: {exc.reason}")
            _show_log(rolling.name if rolling is not None else "", exc.log)
        else:
            warn(
                f"ROLLBACK FAILED{where}: "
                + ("interrupted" if isinstance(exc, KeyboardInterrupt) else f"unexpected error: {exc!r}")
            )
        warn(
            f"the pool may serve two versions or have a worker down: act by hand "
            f"(rokv status -c {opts.configuration} names what is not serving)"
        )
        return Exit.ROLLBACK_FAILED
    warn(
        f"rolled back: {opts.link} -> {old_target} again; every worker that ran serves {old_digest}"
        + (f" ({', '.join(untouched)} never left it)" if untouched else "")
    )
    return Exit.NO


def _show_log(name: str, lines: list[str]) -> None:
    if lines:
        warn(f"the end of {name}'s log:\n" + "\n".join(f"    {line}" for line in lines))


class _sigterm_interrupts:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, like Ctrl-C, so a deploy
    that is asked to stop (or loses its terminal) rolls back instead of dying
    half-way. A SIGHUP that is ignored (``nohup``) stays ignored."""

    def __enter__(self) -> None:
        self._previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}
        if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _interrupt)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_deploy(args: argparse.Namespace) -> int:
    link = args.link or os.environ.get("ROKV_DATA")
    if not link:
        warn("error: no link to repoint: give --link or set ROKV_DATA (the path the workers load)")
        return Exit.USAGE
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        warn(f"error: --timeout must be a number of seconds > 0, not {args.timeout:g}")
        return Exit.USAGE
    if importlib.util.find_spec("supervisor") is None:
        warn("error: rokv deploy talks to supervisord and needs supervisor: pip install 'rokv[server]'")
        return Exit.USAGE
    from rokv.core import resolve_endpoint

    opts = Options(
        new=args.new,
        link=link,
        configuration=supervisor_rpc.configuration(args),
        endpoint=resolve_endpoint(args.endpoint),
        timeout=args.timeout,
        verify=args.verify,
        allow_new_keys=args.allow_new_keys,
    )
    try:
        return deploy(opts)
    except Stop as stop:
        warn(str(stop))
        return stop.code
    except KeyboardInterrupt:  # before the link changed: past it, the deploy rolls back instead
        warn("interrupted. Nothing was changed.")
        return Exit.NO


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``deploy`` on the ``rokv`` parser (rokv.cli loads this
    module when the command runs)."""
    from rokv.endpoints import endpoints_argument

    p = sub.add_parser(
        "deploy",
        description="Check NEW (its digest, and that it holds most keys of the file the link points at), "
        "repoint the symbolic link the workers load, start the workers of supervisord's group 'worker' that "
        "are down, restart the others one at a time, and wait until each answers with NEW's digest. "
        "Run again, it finishes a deploy that was cut short. "
        "At the first failure the link goes back to its old target and the workers already restarted "
        "are restarted on it; the others are never touched. Roll back a finished deploy with "
        "`rokv deploy OLD.rokv`.",
        epilog=epilog("rokv deploy"),
    )
    p.add_argument("new", metavar="NEW.rokv", help="the file to serve, built by `rokv build`")
    p.add_argument(
        "--link", metavar="PATH", default=None, help="the symbolic link the workers load (default: $ROKV_DATA)"
    )
    supervisor_rpc.add_configuration_option(p)
    p.add_argument(
        "--endpoint",
        default=None,
        type=endpoints_argument(),
        help="broker frontend for the pings (default: $ROKV_ENDPOINT, else tcp://127.0.0.1:5555)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="longest one worker's stop, start and first answer may take (default %(default)g)",
    )
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="check NEW's header only, not its digest (after `rokv verify NEW` on a huge file)",
    )
    p.add_argument(
        "--allow-new-keys",
        action="store_true",
        help=f"deploy NEW even if fewer than {100 * MIN_KEY_SHARE:.0f}%% of a sample of the serving file's keys "
        "are in it (refused by default: usually the wrong file)",
    )
    p.set_defaults(run=cmd_deploy)
