"""JSON for the gateway (temporary: measuring orjson against the standard library)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

loads: Callable[[bytes], Any]
dumps: Callable[[Any], bytes]

if os.environ.get("ROKV_HTTP_JSON") == "stdlib":
    loads = json.loads
    _encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def dumps(doc: Any) -> bytes:
        return _encode(doc).encode("utf-8", "surrogatepass")
else:
    import orjson
    loads = orjson.loads
    dumps = orjson.dumps
