"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one.

Every write goes to a temporary sibling in the same folder (same file system)
that `os.replace`/`os.rename` then moves into place in one step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any


def write_bytes_atomic(path: str | os.PathLike, data: bytes | str) -> str:
    """Writes `data` to `path` atomically and returns the path as a string.

    Args:
        path: str or path-like. The file to write; its folder is created.
        data: bytes or str. str is written as UTF-8.

    Example:

    >>> write_bytes_atomic("model.tflite", flatbuffer)
    'model.tflite'
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    fd, tmp_path = tempfile.mkstemp(prefix=f".tmp-{name}-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    return path


def write_json_atomic(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
    allow_nan: bool = True,
) -> str:
    """Writes `obj` as JSON (with a final newline) to `path` atomically; returns the path.

    Args:
        path: str or path-like. The file to write; its folder is created.
        obj: a JSON-able object.
        indent: int or None. Passed to `json.dumps`. Defaults to 2.
        default: callable or None. Turns objects JSON cannot encode into ones it
            can, as in `json.dumps`. Defaults to None (such objects raise).
        allow_nan: bool. False raises on NaN and infinities instead of writing
            non-standard JSON. Defaults to True.

    Example:

    >>> write_json_atomic("runs/report.json", {"accuracy": 0.97})
    'runs/report.json'
    """
    # Encoded before anything touches the disk: an unencodable object leaves no file.
    text = json.dumps(obj, indent=indent, default=default, allow_nan=allow_nan) + "\n"
    return write_bytes_atomic(path, text)


@contextlib.contextmanager
def staged_directory(
    target: str | os.PathLike,
    *,
    replace: bool = False,
    is_complete: Callable[[str], bool] | None = None,
) -> Iterator[str]:
    """Yields an empty staging folder next to `target`; a clean exit moves it to `target`.

    On an exception the staging folder is deleted and `target` is untouched.
    On success the folder is renamed into place in one step:

    - `target` absent: the rename.
    - `is_complete(target)` true (another process finished the same entry
      first): its copy wins and the staging folder is deleted.
    - `target` present otherwise: replaced when `replace=True` or when
      `is_complete` is given (an empty or half-written cache entry); the old
      folder is restored if the rename fails. Else `FileExistsError`.

    Args:
        target: str or path-like. The folder to create; its parent is created.
        replace: bool. Replace an existing `target`. Defaults to False.
        is_complete: callable or None. `path -> bool`, for caches that
            several processes may fill at once. Defaults to None.

    Example:

    >>> with staged_directory("saved_models/news/3") as staging:
    ...     model.export(staging)
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(target)}-")
    try:
        yield staging
        _move_into_place(staging, target, replace, is_complete)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging, target, replace, is_complete):
    if is_complete is not None and is_complete(target):
        return
    if os.path.lexists(target):
        if not replace and is_complete is None:
            raise FileExistsError(f"{target!r} already exists; nothing was replaced.")
        old = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".old-")
        os.rename(target, os.path.join(old, "v"))
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(os.path.join(old, "v"), target)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(staging, target)
    except OSError:
        # Another process renamed its complete copy into place first.
        if is_complete is None or not is_complete(target):
            raise
