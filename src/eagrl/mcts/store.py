"""The append-only trajectory store: one JSON line per searched patient, written as soon as its tree is done.

Line 1 is a header (``{"kind": "header", "config": {...}}``: the settings that shape the search); every
other line is one patient (``{"kind": "patient", "stay_id", "label", "c_exp", "prompt_ids", "prompt_text",
"stats", "trajectories": [...]}``). A patient is therefore stored whole or not at all, and an interrupted
run resumes by skipping the stay ids already present. A search killed mid-write leaves a partial last
line: it is cut off with a warning and that patient is searched again. A bad line anywhere else, or a
header whose settings differ from this run's, is an error that names the file and line.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from eagrl.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class TrajectoryStore:
    def __init__(self, path: str | Path, header: dict | None = None):
        """Open (or create) the store at ``path``; an existing one must carry the same ``header``."""
        self.path = Path(path)
        self.header = dict(header or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done: dict[str, int] = {}
        if self.path.is_file() and self.path.stat().st_size > 0:
            self._recover()
        if not self.path.is_file() or self.path.stat().st_size == 0:
            self._write_line({"kind": "header", "config": self.header})

    # ------------------------------------------------------------------ reading
    def _recover(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        offset, good_end = 0, 0
        for i, line in enumerate(lines):
            end = offset + len(line) + 1
            last = all(not rest.strip() for rest in lines[i + 1:])
            if line.strip():
                try:
                    obj = json.loads(line)
                    complete = end <= len(raw)  # a line without its newline was cut mid-write
                    if not complete:
                        raise ValueError("no trailing newline")
                except ValueError as exc:
                    if not last:
                        raise DataError(f"{self.path}, line {i + 1}: not valid JSON ({exc}); the store is "
                                        "damaged before its last line, so it cannot be resumed safely") from exc
                    msg = (f"{self.path}: line {i + 1} is incomplete (an interrupted write); truncating it "
                           "and searching that patient again")
                    warnings.warn(msg, RuntimeWarning, stacklevel=3)
                    log.warning(msg)
                    with open(self.path, "r+b") as fh:
                        fh.truncate(good_end)
                    break
                self._check(obj, i)
                good_end = end
            offset = end

    def _check(self, obj: dict, i: int) -> None:
        if i == 0:
            if obj.get("kind") != "header":
                raise DataError(f"{self.path}: line 1 is not a store header")
            old = obj.get("config", {})
            diff = sorted(k for k in set(old) | set(self.header) if old.get(k) != self.header.get(k))
            if diff:
                shown = ", ".join(f"{k}: stored {old.get(k)!r} vs now {self.header.get(k)!r}" for k in diff[:5])
                raise ConfigError(f"{self.path} was written with other search settings ({shown}); "
                                  "use another output directory or delete the store to start over")
        elif obj.get("kind") == "patient":
            self._done[str(obj["stay_id"])] = i

    def done(self) -> set[str]:
        """Stay ids already stored."""
        return set(self._done)

    def __contains__(self, stay_id: str) -> bool:
        return str(stay_id) in self._done

    def __len__(self) -> int:
        return len(self._done)

    def patients(self) -> Iterator[dict]:
        """Every stored patient record, in the order written."""
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    if obj.get("kind") == "patient":
                        yield obj

    # ------------------------------------------------------------------ writing
    def append(self, record: dict) -> None:
        """Store one patient (a dict with at least ``stay_id``), durably, in one line."""
        sid = str(record["stay_id"])
        if sid in self._done:
            raise DataError(f"{self.path}: stay {sid} is already stored")
        self._write_line({"kind": "patient", **record, "stay_id": sid})
        self._done[sid] = len(self._done) + 1

    def _write_line(self, obj: dict) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
