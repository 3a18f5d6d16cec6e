"""Files that are whole or absent: the one atomic writer, and benchmark result records.

`atomic_write(path, write)` writes through a temporary file beside `path`, fsyncs it, renames
it over `path` and fsyncs the directory: a crash leaves the old file or the new one, never a
torn one. Trace chunks, benchmark results and the generated benchmarks page all go through it.

`record_result(results_dir, bench, payload)` stores one benchmark run as
`results_dir/BENCH-YYYYmmddTHHMMSSZ.json` with the command, the machine, the UTC date and the
host steal the payload carries; `docs/benchmarks.md` is generated from these files
(`rtdiff report --benchmarks`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

RESULTS_DIR = Path("benchmarks/results")


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write via `write(fileobj)` to a temp file beside `path`, fsync, then `os.replace`."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable (best effort: not every filesystem allows a dir fsync).
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def machine() -> str:
    """One line naming the machine a figure was measured on."""
    u = platform.uname()
    return (f"{os.cpu_count()} CPUs {u.machine}, Linux {u.release}, "
            f"Python {platform.python_version()}")


def record_result(results_dir: str | Path, bench: str, payload: dict[str, Any],
                  *, argv: list[str] | None = None) -> Path:
    """Store one benchmark run for the benchmarks page; returns the file written."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    now = time.gmtime()
    args = sys.argv[1:] if argv is None else argv
    record = {
        "bench": bench,
        "command": "rtdiff " + " ".join(a for a in args if a),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", now),
        **payload,
    }
    path = d / f"{bench}-{time.strftime('%Y%m%dT%H%M%SZ', now)}.json"
    n = 1
    while path.exists():  # two records in one second
        path = d / f"{bench}-{time.strftime('%Y%m%dT%H%M%SZ', now)}-{n}.json"
        n += 1
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path
