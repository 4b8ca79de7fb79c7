"""The bench's folder: the JSONL row store (append, resume, repair) and the lock that keeps one run per folder.

Each process appends its rows to rows-<rank>.jsonl as soon as a group of images is done; a rerun skips every
(task, method, image, seed) that any rows file already holds. A line cut by a kill is dropped with a warning (file
and line) and its row recomputed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import warnings
from pathlib import Path

KEY = ("task", "method", "image", "seed")
LOCK_NAME = ".bench.lock"


def read_rows(out: Path) -> list[dict]:
    """All rows of every process in `out`, deduplicated by (task, method, image, seed), sorted; a line that is
    not a row (cut by a killed run) is skipped with a warning naming its file and line."""
    rows = {}
    for path in sorted(Path(out).glob("rows-*.jsonl")):
        for r in _rows_in(path)[0]:
            rows[tuple(r[k] for k in KEY)] = r
    return sorted(rows.values(), key=lambda r: (r["task"], r["method"], r["index"], r["seed"]))


def rows_of(path: Path) -> list[dict]:
    """The rows of one rows file (lines that are not rows skipped, each with a warning)."""
    return _rows_in(Path(path))[0]


def json_lines(folder: Path, names: list[str]) -> list[dict]:
    """The records of the named JSON-lines files of `folder`, in order (plain rows, no bench key)."""
    return [json.loads(line) for name in names for line in (folder / name).read_text().splitlines() if line]


def append_rows(out: Path, rank: int, rows: list[dict]) -> None:
    """Add `rows` to process `rank`'s rows file."""
    with open(Path(out) / f"rows-{rank}.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _rows_in(path: Path) -> tuple[list[dict], int]:
    """The rows of one rows file and how many of its lines were not rows (each with a warning)."""
    rows, bad = [], 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and all(k in row for k in (*KEY, "index"))):
            warnings.warn(f"{path} line {number} is not a complete row (cut by a killed run?): skipped", stacklevel=3)
            bad += 1
            continue
        rows.append(row)
    return rows, bad


def drop_malformed_rows(out: Path) -> None:
    """Rewrite each rows file that has lines which are not rows without them (atomically), so that the rows
    appended next start on a line of their own; the rows those lines held are recomputed, as missing ones."""
    for path in sorted(Path(out).glob("rows-*.jsonl")):
        rows, bad = _rows_in(path)
        if bad:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step (a temporary file renamed over it: never half written)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: ranks may write at once
    temporary.write_text(text)
    os.replace(temporary, path)


def check_same_dtype(out: Path, rows: list[dict], dtype: str | None, baselines) -> None:
    """Refuse to add sampler rows in `dtype` to a folder whose sampler rows (methods not in `baselines`) ran the
    network in another precision (one table would mix them); rows from before rows recorded it ran in float32."""
    wanted = dtype or "float32"
    found = sorted({r.get("dtype", "float32") for r in rows if r["method"] not in baselines} - {wanted})
    if found:
        raise ValueError(
            f"{out} holds sampler rows whose network ran in {', '.join(found)}; this run asks for {wanted}. "
            "Use another --out (baseline rows use no network and can be copied over)"
        )


class BenchFolderBusy(OSError):
    """Another bench holds the output folder's lock."""


@contextlib.contextmanager
def folder_lock(out: Path, state):
    """Hold `out`/.bench.lock while this run works in `out`: an flock, which the kernel drops when its process
    ends (a killed run leaves no stale lock), taken by the main process for all the ranks of its run. Another
    run on the same folder stops, before any work, with a one-line BenchFolderBusy naming the lock's holder."""
    handle, refusal = None, None
    if state.is_main_process:
        handle = open(out / LOCK_NAME, "a+")  # noqa: SIM115 (held until the end of the run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its id yet"
            handle.close()
            handle = None
            refusal = (
                f"bench folder '{out}' is in use by another bench ({holder}; lock file {out / LOCK_NAME}): "
                f"wait for it to finish or give another --out"
            )
        else:
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise BenchFolderBusy(refusal)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # closing the file releases the flock
