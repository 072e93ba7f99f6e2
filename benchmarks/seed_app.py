"""The service rokv replaces, rebuilt for comparison: a FastAPI app that
answers ``POST /get_value`` from a dict loaded from the same JSON file, with
pydantic's UUID4 validation, served by uvicorn in one process.

    pip install -e '.[bench]'
    SEED_DATA=data/example.json uvicorn benchmarks.seed_app:app --port 8080

Its answers are the seed's: 200 ``{"value": ...}``; 404 ``{"message": ...}``
for a key it does not hold; FastAPI's own 422 for a body that fails
validation. The handler is ``async def``, FastAPI's fastest kind (a plain
``def`` would run in a thread pool), so the comparison favours the seed.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import UUID4, BaseModel

DATA: dict[str, str] = json.load(open(os.environ.get("SEED_DATA", "data/example.json"), encoding="utf-8"))

app = FastAPI()


class Query(BaseModel):
    key: UUID4


@app.post("/get_value")
async def get_value(query: Query) -> JSONResponse:
    value = DATA.get(str(query.key))
    if value is None:
        return JSONResponse(status_code=404, content={"message": f"key {query.key} not found"})
    return JSONResponse(content={"value": value})
