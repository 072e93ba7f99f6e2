"""supervisord's XML-RPC interface, as ``rokv deploy`` and ``rokv status`` use it.

The server URL (and credentials) come from the ``[supervisorctl]`` section of
a supervisord.conf, read by supervisor's own ``ClientOptions`` so ``%(here)s``
and ``%(ENV_X)s`` expand exactly as for ``supervisorctl -c FILE``. The calls
go through supervisor's ``SupervisorTransport`` (unix socket or http), with a
socket timeout so a hung supervisord cannot hang the caller.

supervisor's modules are imported on the first call: the ``rokv`` command
registers ``deploy`` on every run, and ``rokv get`` should not pay 20 ms for
them.
"""

from __future__ import annotations

import argparse
import configparser
import os
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_CONF",
    "Process",
    "Refused",
    "Supervisor",
    "SupervisorConfigError",
    "SupervisorUnreachable",
    "add_configuration_option",
    "configuration",
]

#: The supervisord.conf used when neither ``-c`` nor $ROKV_SUPERVISOR_CONF names one.
DEFAULT_CONF = "supervisord.conf"

#: Seconds a call that does not wait for a process may take.
CALL_TIMEOUT = 15.0
#: The most of a process's log read after a failure.
_LOG_BYTES = 1 << 16


class SupervisorConfigError(Exception):
    """The supervisord.conf is missing, unreadable or has no usable
    ``[supervisorctl]`` section."""


class SupervisorUnreachable(Exception):
    """supervisord did not answer: not running, wrong socket or URL, refused
    credentials, or no reply in time."""


class Refused(Exception):
    """supervisord answered a call with a fault: ``fault`` is its name in
    supervisor's ``Faults`` table (``SPAWN_ERROR``, ``NOT_RUNNING``, ...)."""

    def __init__(self, fault: str, message: str) -> None:
        super().__init__(message)
        self.fault = fault


@dataclass(frozen=True)
class Process:
    """One process as ``getProcessInfo`` describes it."""

    name: str  # "group:process", what the calls take
    process: str  # the process name alone (SUPERVISOR_PROCESS_NAME)
    group: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, FATAL, ...
    pid: int  # 0 when not running
    description: str  # supervisor's own words, e.g. "Exited too quickly ..."
    spawnerr: str

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Process:
        return cls(
            name=f"{info['group']}:{info['name']}",
            process=info["name"],
            group=info["group"],
            state=info["statename"],
            pid=int(info["pid"]),
            description=info.get("description", ""),
            spawnerr=info.get("spawnerr", ""),
        )


class Supervisor:
    """A supervisord, reached at ``serverurl`` (``unix:///path`` or ``http://host:port``).

    Every call opens a fresh connection: a call cut short (timeout, Ctrl-C)
    then leaves no half-read reply behind for the next one.
    """

    def __init__(self, serverurl: str, username: str | None = None, password: str | None = None) -> None:
        if not serverurl.startswith(("unix://", "http://")):
            raise SupervisorConfigError(f"unsupported supervisord serverurl {serverurl!r} (unix:// or http://)")
        self.serverurl = serverurl
        self._username = username
        self._password = password

    @classmethod
    def from_config(cls, path: str) -> Supervisor:
        """The supervisord that ``supervisorctl -c path`` would talk to.

        Raises:
            SupervisorConfigError: no such file, unreadable, or no
                ``[supervisorctl]`` section (or a bad value in it).
        """
        from supervisor.options import ClientOptions

        if not os.path.isfile(path):
            raise SupervisorConfigError(f"{path}: no such supervisord configuration file")
        try:
            section = ClientOptions().read_config(path)
        except (ValueError, OSError, configparser.Error) as exc:  # missing section, bad syntax, unset %(ENV_X)s
            # The first line says it; supervisor goes on to list every variable.
            first = str(exc).splitlines()[0].split(". Available names")[0] if str(exc) else repr(exc)
            raise SupervisorConfigError(f"{path}: {first}") from None
        return cls(section.serverurl, section.username, section.password)

    def call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """``method`` (e.g. ``supervisor.startProcess``) with ``args``.

        Raises:
            Refused: supervisord answered with a fault.
            SupervisorUnreachable: no connection, an HTTP error, or no
                reply within ``timeout`` seconds.
        """
        import xmlrpc.client

        from supervisor.xmlrpc import getFaultDescription

        transport = _transport(self._username, self._password, self.serverurl, max(timeout, 0.1))
        # The URL is a placeholder: the transport connects to serverurl.
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return getattr(proxy, method)(*args)
        except xmlrpc.client.Fault as fault:
            raise Refused(str(getFaultDescription(fault.faultCode)), fault.faultString) from None
        except TimeoutError:
            raise SupervisorUnreachable(
                f"supervisord at {self.serverurl} did not answer {method} within {timeout:.0f} s"
            ) from None
        except (OSError, xmlrpc.client.ProtocolError, xmlrpc.client.ResponseError) as exc:
            raise SupervisorUnreachable(f"cannot reach supervisord at {self.serverurl}: {exc}") from None
        finally:
            transport.close()

    def processes(self, group: str) -> list[Process]:
        """The processes of ``group``, by name.

        Raises:
            SupervisorUnreachable: as :meth:`call` (a refusal included).
        """
        try:
            infos = self.call("supervisor.getAllProcessInfo")
        except Refused as exc:
            raise SupervisorUnreachable(f"supervisord at {self.serverurl} refused getAllProcessInfo: {exc}") from None
        return sorted((Process.from_info(i) for i in infos if i["group"] == group), key=lambda p: p.name)

    def process(self, name: str) -> Process:
        """One process by ``group:name``.

        Raises:
            Refused: no such process. SupervisorUnreachable: as :meth:`call`.
        """
        return Process.from_info(self.call("supervisor.getProcessInfo", name))

    def log_end(self, name: str) -> int | None:
        """Where the process's stdout log ends now (None if it has none)."""
        try:
            return int(self.call("supervisor.tailProcessStdoutLog", name, 0, 0)[1])
        except (Refused, SupervisorUnreachable):
            return None

    def log_since(self, name: str, offset: int | None, lines: int) -> list[str]:
        """The last ``lines`` lines of the process's stdout log written after
        ``offset`` (from :meth:`log_end`; the whole tail if None). Never raises:
        an unreadable log gives no lines."""
        try:
            end = self.log_end(name)
            if offset is None or end is None or not 0 <= offset <= end or end - offset > _LOG_BYTES:
                text = self.call("supervisor.readProcessStdoutLog", name, -4096, 0)
            else:
                text = self.call("supervisor.readProcessStdoutLog", name, offset, 0)
        except (Refused, SupervisorUnreachable):
            return []
        return [line for line in str(text).splitlines() if line.strip()][-lines:]


def _transport(username: str | None, password: str | None, serverurl: str, timeout: float) -> Any:
    """supervisor's own transport, with a timeout on connecting and on every read."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(username, password, serverurl)
    make = transport._get_connection

    def get_connection() -> Any:
        conn = make()
        conn.timeout = timeout  # http: used by connect()
        conn.connect()
        conn.sock.settimeout(timeout)  # the unix socket's connect() takes none
        return conn

    transport._get_connection = get_connection
    return transport


def add_configuration_option(parser: argparse.ArgumentParser) -> None:
    """``-c/--configuration FILE``, as every command that talks to
    supervisord takes it; :func:`configuration` gives the file to use."""
    parser.add_argument(
        "-c",
        "--configuration",
        metavar="FILE",
        default=None,
        help=f"supervisord.conf whose [supervisorctl] serverurl is used "
        f"(default: $ROKV_SUPERVISOR_CONF, else ./{DEFAULT_CONF})",
    )


def configuration(args: argparse.Namespace) -> str:
    """The supervisord.conf a command was given: ``-c``, else
    $ROKV_SUPERVISOR_CONF, else :data:`DEFAULT_CONF`."""
    return args.configuration or os.environ.get("ROKV_SUPERVISOR_CONF") or DEFAULT_CONF
