"""JSON in and out of the gateway, with the standard library.

orjson was measured against this (benchmarks/httpbench.py, BENCHMARKS.md
"HTTP"): it saves about 2 us of parsing and encoding per /get_value and 9 us
per /get_values of 100 keys, yet requests/s under wrk moved by 3% at most, well
inside the run-to-run noise, since the HTTP server and the pool's round trip
cost ten times more. Not worth a dependency.
"""

from __future__ import annotations

import json
from typing import Any

#: Bytes in (UTF-8, -16 or -32, as RFC 8259 allows); raises ValueError
#: (UnicodeDecodeError included) or RecursionError on a bad body.
loads = json.loads

# ensure_ascii=False: values travel as UTF-8, not \\u escapes; compact
# separators, as FastAPI's responses are.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(doc: Any) -> bytes:
    """``doc`` as compact UTF-8 JSON."""
    return _encode(doc).encode("utf-8")
