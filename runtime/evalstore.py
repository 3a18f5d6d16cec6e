"""The episode store of `rtdiff eval`: one JSON line per finished episode, resumable.

`EpisodeStore(path)` is an append-only JSONL file. Every line is one JSON object with a `key`
(what the episode was: task, planner, setting, seed) and whatever its record holds. Contract:

- `append(records)` writes the lines, flushes and fsyncs before it returns: a crash loses at
  most the lines being written, never one already appended.
- Reading (`read_records`, `EpisodeStore.open`) ignores a torn last line (no newline, or not
  a whole JSON object): what a crash in the middle of a write leaves. A bad line anywhere else
  is a `StoreError`. `open` also cuts the torn line off, so the next append starts a fresh one.
- The first line with a key wins; a key is never appended twice by one `EpisodeStore`.
- While open, the store holds an exclusive `flock`: a second writer gets a `StoreError` instead
  of interleaving lines.

Standard library only: the store is read by the driver, which need not import a planner.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["EpisodeStore", "StoreError", "read_records"]


class StoreError(Exception):
    """The store cannot be used: a bad line, a second writer, an unreadable file."""


def _parse(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records in `data` and the length of its whole-line prefix (a torn tail excluded)."""
    records: list[dict[str, Any]] = []
    good = 0
    lines = data.split(b"\n")
    last = len(lines) - 1  # lines[last] is what follows the final newline: b"" or a torn line
    for i, line in enumerate(lines):
        if i == last:
            break
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
            if i == last - 1 and not lines[last]:
                break  # the last line, whole but torn inside (a crash before its newline)
            raise StoreError(f"{path} line {i + 1} is not an episode record")
        records.append(rec)
        good += len(line) + 1
    return records, good


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every episode record in the store at `path`, in file order (none if it does not exist);
    a torn last line is ignored."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot read {p}: {exc.strerror or exc}") from None
    return _parse(data, p)[0]


class EpisodeStore:
    """The store at `path`, open for appending (a context manager).

    Example:
        with EpisodeStore("runs/eval/episodes.jsonl") as store:
            todo = [e for e in episodes if e.key not in store.done]
            store.append([{"key": ..., "success": True, ...}])
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.done: dict[str, dict[str, Any]] = {}  # key -> record, the first line of each key
        self.truncated = 0  # bytes of a torn last line cut off at open
        self._f: IO[bytes] | None = None

    def __enter__(self) -> EpisodeStore:
        self.open()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+b")  # held (and locked) until close()
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise StoreError(f"{self.path} is in use by another writer") from None
        try:
            f.seek(0)
            data = f.read()
            records, good = _parse(data, self.path)
            if good < len(data):  # a torn last line: cut it off, appends start a new line
                self.truncated = len(data) - good
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            f.close()
            raise
        for rec in records:
            self.done.setdefault(rec["key"], rec)
        self._f = f

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Append the records whose key is not in the store yet; returns how many. Durable
        (flushed and fsynced) when it returns."""
        if self._f is None:
            raise StoreError(f"{self.path} is not open")
        lines = []
        for rec in records:
            key = rec.get("key")
            if not isinstance(key, str):
                raise ValueError(f"an episode record needs a string key, got {key!r}")
            if key in self.done:
                continue
            self.done[key] = rec
            lines.append(json.dumps(rec, separators=(",", ":")) + "\n")
        if lines:
            self._f.seek(0, os.SEEK_END)
            self._f.write("".join(lines).encode())
            self._f.flush()
            os.fsync(self._f.fileno())
        return len(lines)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()  # closing releases the flock
            self._f = None
