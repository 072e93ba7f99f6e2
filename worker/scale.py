"""``rokv-scale``: start the first ROKV_WORKERS worker slots of supervisord.conf
and stop the others, through supervisord's XML-RPC interface.

Supervisor cannot take ``numprocs`` from an environment variable that may be
unset, so the configuration declares a fixed number of slots that do not start
by themselves and this one-shot program (run by supervisord, which hands it
``SUPERVISOR_SERVER_URL``) picks how many run.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from xmlrpc.client import Fault

from supervisor import childutils
from supervisor.xmlrpc import Faults

GROUP = "worker"
DEFAULT_WORKERS = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rokv-scale",
        description="Run N rokv worker slots under supervisord (started by supervisord itself; "
        "needs SUPERVISOR_SERVER_URL).",
    )
    parser.add_argument(
        "workers", nargs="?", default=os.environ.get("ROKV_WORKERS") or str(DEFAULT_WORKERS),
        help="how many workers to run (default $ROKV_WORKERS, else %(default)s)",
    )
    args = parser.parse_args(argv)
    if "SUPERVISOR_SERVER_URL" not in os.environ:
        parser.error("SUPERVISOR_SERVER_URL is not set: run me from supervisord")
    rpc: Any = childutils.getRPCInterface(os.environ)
    slots = sorted(
        info["name"] for info in rpc.supervisor.getAllProcessInfo() if info["group"] == GROUP
    )
    try:
        wanted = int(args.workers)
    except ValueError:
        wanted = -1
    if not 1 <= wanted <= len(slots):
        print(f"rokv-scale: ROKV_WORKERS={args.workers!r}: expected 1 to {len(slots)} "
              f"(the worker slots in supervisord.conf)", file=sys.stderr)
        return 1
    for name in slots[:wanted]:
        try:
            rpc.supervisor.startProcess(f"{GROUP}:{name}", False)
        except Fault as fault:
            if fault.faultCode != Faults.ALREADY_STARTED:
                raise
    for name in slots[wanted:]:
        try:
            rpc.supervisor.stopProcess(f"{GROUP}:{name}", False)
        except Fault as fault:
            if fault.faultCode != Faults.NOT_RUNNING:
                raise
    print(f"rokv-scale: running {wanted} of {len(slots)} worker slots", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
