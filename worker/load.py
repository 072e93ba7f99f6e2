"""Opening a dataset to serve, whatever its format: a compiled ``.rokv`` file
is memory-mapped (:mod:`rokv.worker.reader`), a ``.json`` or ``.jsonl`` source
is read into a dict (:mod:`rokv.dataset`)."""

from __future__ import annotations

import os

from rokv.dataset import empty_error, load_dataset, unsupported_error
from rokv.worker.reader import Store


def open_dataset(path: str | os.PathLike[str], *, allow_empty: bool = False) -> dict[str, str] | Store:
    """The dataset at ``path`` ready to serve: a compiled ``.rokv`` file is
    memory-mapped (see :func:`rokv.worker.reader.open_store`: opening costs the same
    whatever its size); ``.json`` and ``.jsonl`` are read by
    :func:`load_dataset`. Both results have ``get(key)`` (canonical keys) and
    ``len()``. A dataset of no keys is refused unless ``allow_empty``.

    Raises:
        DatasetError: the suffix is none of ``.rokv``, ``.json`` and
            ``.jsonl``; the file cannot be served (a :class:`rokv.worker.layout.StoreError`
            for a ``.rokv`` that is truncated, of another format or version),
            or holds no keys and ``allow_empty`` is false.
    """
    name = os.fsdecode(path)
    suffix = os.path.splitext(name)[1].lower()
    if suffix == ".rokv":
        store = Store(path)
        if not len(store) and not allow_empty:
            store.close()
            raise empty_error(path)
        return store
    if suffix not in (".json", ".jsonl"):
        # load_dataset's own message names only its formats: it reads sources.
        raise unsupported_error(name, suffix, ".rokv, .json or .jsonl")
    return load_dataset(path, allow_empty=allow_empty)
