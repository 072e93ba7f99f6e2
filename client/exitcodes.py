"""The exit statuses of every ``rokv`` command, in one table.

A status means the same kind of outcome whatever the command; README
"Exit codes" lists what each command returns.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """What a ``rokv`` command's exit status means."""

    #: Done: found, built, intact, deployed, every answer right.
    OK = 0
    #: ``get``/``get-many``: a key is not in the dataset.
    NOT_FOUND = 1
    #: ``build``/``inspect``/``verify``: the source is refused or the file is
    #: corrupt; ``bench``: an answer was wrong; ``deploy``: refused, or failed
    #: and rolled back. (The same status as NOT_FOUND: "the answer is no".)
    FAILED = 1
    #: Bad usage: an unknown option, a malformed endpoint, an invalid key.
    USAGE = 2
    #: No reply: the service (or, for ``deploy``, supervisord) is unreachable;
    #: ``bench``: some requests got no answer.
    UNAVAILABLE = 3
    #: The server refused the request (``bad_request``, ``unsupported_version``).
    REFUSED = 4
    #: ``deploy``: failed, and the pool could not be put back: act by hand.
    ROLLBACK_FAILED = 5
