"""The record store of a run directory: its config, its per-process JSONL records, and their merge.

    claim(out, config)               # record the config in a new directory, or check it against its own
    with Appender(out, rank, world) as store:
        store.append([{"id": ..., ...}, ...])    # written and fsynced before the call returns
    records = merged_records(out)    # every process's records, in data order

A directory holds `config.json` (written first), one JSONL file per process (`samples.jsonl`, or
`samples.rank{r}.jsonl` under torchrun) and `summary.json`. A last line cut off by a killed run is
dropped when its file is opened for appending, so the sample is recomputed rather than lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

CONFIG = "config.json"
SUMMARY = "summary.json"


class ConfigMismatchError(ValueError):
    """A run directory already holds a run of another configuration."""


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Return the records of a JSONL file and the byte length of its intact part.

    A last line without its newline, or one that does not parse, is the one a killed run was
    writing: it is left out. Any other line that does not parse is an error.
    """
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    records, good, start = [], 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            break  # cut off before its newline
        line = data[start:end]
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if data[end + 1 :].strip():
                    number = data.count(b"\n", 0, start) + 1
                    raise ValueError(f"{path}: line {number} is not JSON") from None
                break
        start = good = end + 1
    return records, good


def record_files(out: Path) -> list[Path]:
    """Return the JSONL files of a run directory, one per process that wrote records."""
    return sorted(out.glob("samples*.jsonl"))


def recorded_ids(out: Path) -> set[str]:
    """Return the ids of the samples any process of the run has recorded."""
    return {r["id"] for path in record_files(out) for r in read_records(path)[0]}


def merged_records(out: Path) -> list[dict[str, Any]]:
    """Return the records of every process of a run, in data order; a sample recorded twice is an error."""
    records: dict[str, dict[str, Any]] = {}
    for path in record_files(out):
        for record in read_records(path)[0]:
            if record["id"] in records:
                raise ValueError(f"sample {record['id']!r} is recorded twice in {out}")
            records[record["id"]] = record
    return sorted(records.values(), key=lambda r: r["index"])


class Appender:
    """This process's JSONL file of a run, open for appending after its intact part."""

    def __init__(self, out: Path, rank: int, world: int) -> None:
        self.path = out / ("samples.jsonl" if world == 1 else f"samples.rank{rank}.jsonl")
        self._file: IO[str] | None = None

    def __enter__(self) -> Appender:
        _, intact = read_records(self.path)
        if self.path.exists() and self.path.stat().st_size > intact:
            os.truncate(self.path, intact)  # drop the cut-off line before appending after it
        self._file = open(self.path, "a")  # closed by __exit__: the file stays open across batches
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write `records`, one line each, and return once they are on disk."""
        if self._file is None:
            raise RuntimeError("Appender.append outside its `with` block")
        self._file.write("".join(json.dumps(r) + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())


def claim(out: Path, config: dict[str, Any]) -> None:
    """Record `config` in a new run directory, or check it against the directory's own."""
    path = out / CONFIG
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not JSON ({err}); use another --out directory") from None
        found = differences(stored, config)
        if found:
            raise ConfigMismatchError(
                f"{out} holds a run with another configuration ({'; '.join(found)}); "
                "use another --out directory, or remove this one to start over"
            )
        return
    if record_files(out) or (out / SUMMARY).exists():
        raise ConfigMismatchError(f"{out} holds results but no {CONFIG}; use another --out directory")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path)


def differences(stored: Any, new: Any, prefix: str = "") -> list[str]:
    """Return each field where `stored` and `new` differ as "a.b: STORED there, NEW now" (keys sorted)."""
    if isinstance(stored, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(stored) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out += differences(stored.get(key, "<absent>"), new.get(key, "<absent>"), name)
        return out
    if stored != new:
        return [f"{prefix or 'config'}: {json.dumps(stored)} there, {json.dumps(new)} now"]
    return []


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """Write `summary.json` whole or not at all (through a temporary file)."""
    tmp = out / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / SUMMARY)


def stored_config(out: Path) -> dict[str, Any]:
    """Return the config a run directory holds."""
    return json.loads((out / CONFIG).read_text())
