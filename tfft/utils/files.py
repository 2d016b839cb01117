"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one.

Every write goes to a temporary sibling in the same folder (same file system)
that `os.replace`/`os.rename` then moves into place in one step.

Finished files and folders get the modes the user's umask gives a plain
`open()`/`os.mkdir()` (0644/0755 under umask 022), so a server running as
another user can read them; a folder stays private (inside a 0700 temporary
parent) until it is moved into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

_TEMPORARY_NAME_ATTEMPTS = 100


def _create_temporary_file(folder: str, name: str) -> tuple[int, str]:
    """Opens a new, uniquely named file beside `name` for writing.

    Created with mode 0o666 so the kernel applies the umask, as for `open(path,
    "w")` (`tempfile.mkstemp` would force 0o600 on the finished file).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMPORARY_NAME_ATTEMPTS):
        path = os.path.join(folder, f".tmp-{name}-{secrets.token_hex(6)}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(
        errno.EEXIST, f"No free temporary file name beside {name!r} after "
        f"{_TEMPORARY_NAME_ATTEMPTS} attempts", folder,
    )


def write_bytes_atomic(path: str | os.PathLike, data: bytes | str) -> str:
    """Writes `data` to `path` atomically and returns the path as a string.

    The file gets the mode the umask gives a new file (0644 under umask 022).

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
    fd, tmp_path = _create_temporary_file(folder, os.path.basename(path))
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

    The file gets the mode the umask gives a new file (0644 under umask 022).

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
def private_staging(target: str | os.PathLike) -> Iterator[str]:
    """Yields an empty folder beside `target`, readable only by this user until moved.

    The folder sits inside a hidden 0700 temporary folder in `target`'s parent
    (same file system, so a rename moves it in one step) and itself has the
    umask's mode (0755 under umask 022), which it keeps when renamed to
    `target`. On exit whatever was not moved out is deleted.

    Args:
        target: str or path-like. The folder the staging folder is meant to
            become; its parent is created.

    Example:

    >>> with private_staging("saved_models/news/3") as staging:
    ...     model.export(staging)
    ...     rename_directory_exclusive(staging, "saved_models/news/3")
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(target)
    holder = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{name}-")
    try:
        staging = os.path.join(holder, name)
        os.mkdir(staging)  # mode 0o777 minus the umask: what the finished folder keeps
        yield staging
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def rename_directory_exclusive(source: str | os.PathLike, target: str | os.PathLike) -> str:
    """Renames the folder `source` to `target` unless `target` exists; returns `target`.

    Nothing is ever replaced: when `target` exists, or appears while this runs
    (`os.rename` of a folder onto a non-empty folder fails on POSIX),
    `FileExistsError` is raised and `source` stays where it was. An empty
    folder created at `target` in the instant between the check and the
    rename is the one thing the rename may replace; it holds nothing.

    Args:
        source: str or path-like. A folder.
        target: str or path-like. Its new path, on the same file system.

    Example:

    >>> rename_directory_exclusive("saved_models/news/.tmp-3-x/3", "saved_models/news/3")
    """
    source, target = os.fspath(source), os.fspath(target)
    exists = FileExistsError(errno.EEXIST, "Already exists; nothing was replaced", target)
    if os.path.lexists(target):
        raise exists
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY) or os.path.lexists(target):
            raise exists from error
        raise
    return target


def replace_directory(source: str | os.PathLike, target: str | os.PathLike) -> str:
    """Renames the folder `source` to `target`, replacing whatever is there; returns `target`.

    An existing `target` is first renamed aside (a hidden sibling), then
    deleted once `source` is in its place; if that second rename fails the old
    `target` is put back.

    Args:
        source: str or path-like. A folder.
        target: str or path-like. Its new path, on the same file system.

    Example:

    >>> replace_directory("saved_models/news/.tmp-3-x/3", "saved_models/news/3")
    """
    source, target = os.fspath(source), os.fspath(target)
    if not os.path.lexists(target):
        os.rename(source, target)
        return target
    old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(target)), prefix=".old-")
    os.rename(target, os.path.join(old, "v"))
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(os.path.join(old, "v"), target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return target


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

    - `target` absent: the rename, which never replaces a folder that another
      process moved there meanwhile (`FileExistsError`).
    - `is_complete(target)` true (another process finished the same entry
      first): its copy wins and the staging folder is deleted.
    - `target` present otherwise: replaced when `replace=True` or when
      `is_complete` is given (an empty or half-written cache entry); the old
      folder is restored if the rename fails. Else `FileExistsError`.

    The staging folder is private to this user until the move; the finished
    folder has the mode the umask gives `os.mkdir` (0755 under umask 022).

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
    with private_staging(target) as staging:
        yield staging
        _move_into_place(staging, target, replace, is_complete)


def _move_into_place(staging, target, replace, is_complete):
    if is_complete is not None and is_complete(target):
        return
    if os.path.lexists(target):
        if not replace and is_complete is None:
            raise FileExistsError(f"{target!r} already exists; nothing was replaced.")
        if is_complete is not None and is_complete(target):
            return  # another writer finished a sound copy since the first check
        replace_directory(staging, target)
        return
    try:
        rename_directory_exclusive(staging, target)
    except FileExistsError:
        # Another process renamed its complete copy into place first.
        if is_complete is None:
            raise FileExistsError(
                f"{target!r} already exists; nothing was replaced."
            ) from None
        if not is_complete(target):
            raise
