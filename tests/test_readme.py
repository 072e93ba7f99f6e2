"""README.md's Python examples, run as written against a real broker and
workers on data/example.json: a reader who pastes them gets what their
comments say (an example once looked up a key the bundled data lacks, and
raised KeyNotFound)."""

from __future__ import annotations

import ast
import asyncio
import re
import textwrap

from support.procs import REPO, Stack

README_ENDPOINT = "tcp://127.0.0.1:5555"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.MULTILINE | re.DOTALL)


def promised(block: str) -> dict[str, object]:
    """``name = ...  # <a Python literal>[, words]``: the value each commented
    assignment promises."""
    promises = {}
    for name, comment in re.findall(r"^\s*(\w+) = .*?#\s*(.+)$", block, re.MULTILINE):
        text = comment
        while text:
            try:
                promises[name] = ast.literal_eval(text)
                break
            except (ValueError, SyntaxError):
                text = text.rpartition(",")[0]  # drop the words after the literal
    return promises


def test_the_blocking_client_example_gets_what_its_comments_say(stack: Stack) -> None:
    block = python_blocks()[0]
    assert README_ENDPOINT in block
    scope: dict[str, object] = {}
    exec(block.replace(README_ENDPOINT, stack.frontend), scope)
    promises = promised(block)
    assert set(promises) >= {"value", "values"}, promises
    for name, value in promises.items():
        assert scope[name] == value, name


def test_the_async_client_example_runs(stack: Stack, example: dict[str, str]) -> None:
    block = python_blocks()[1]
    assert README_ENDPOINT in block
    keys = list(example)[:20]
    # The example uses `key` and `keys` (and top-level await): given here.
    body = block.replace(README_ENDPOINT, stack.frontend)
    source = "import asyncio\nasync def main(key, keys):\n" + textwrap.indent(body, "    ") + "\n    return locals()\n"
    scope: dict[str, object] = {}
    exec(source, scope)
    got = asyncio.run(scope["main"](keys[0], keys))  # type: ignore[operator]
    assert got["value"] == example[keys[0]]
    assert got["values"] == [example[k] for k in keys]
