"""A results table on disk that survives being killed: atomic writes, resume, settings check.

Rows are appended a batch at a time by rewriting the CSV to a temporary file and renaming it
over the old one, so the file on disk is always a complete table (a SIGKILL loses at most
the rows of the batch in flight). The settings that produced the rows are stored beside it
(``<file>.settings.json``); reopening the file with other settings is an error, never a
silent mix of two experiments.
"""
from __future__ import annotations

import csv
import json
import os
from io import StringIO
from pathlib import Path

from .errors import UserError


class SettingsMismatch(UserError):
    """The results file was written with other settings than the ones asked for now."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ResultsFile:
    """Rows keyed by ``key`` columns; ``done(key)`` tells which are already there."""

    def __init__(self, path, settings: dict, key: tuple = ("episode",)):
        self.path = Path(path)
        self.settings_path = self.path.with_name(self.path.name + ".settings.json")
        self.key = tuple(key)
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self.rows: list = []
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.settings_path, json.dumps(self.settings, indent=2, sort_keys=True))
        self._keys = {self._key_of(r) for r in self.rows}

    def _load(self) -> None:
        if not self.settings_path.exists():
            raise SettingsMismatch(f"{self.path} exists but {self.settings_path} does not; move it away or delete it")
        stored = json.loads(self.settings_path.read_text())
        if stored != self.settings:
            diff = sorted(k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k))
            details = ", ".join(f"{k}: file {stored.get(k)!r} vs now {self.settings.get(k)!r}" for k in diff)
            raise SettingsMismatch(f"{self.path} was written with other settings ({details}); use another --out")
        with self.path.open(newline="") as f:
            self.rows = list(csv.DictReader(f))

    def _key_of(self, row: dict) -> tuple:
        return tuple(str(row[k]) for k in self.key)

    def done(self, *key) -> bool:
        return tuple(str(k) for k in key) in self._keys

    def append(self, rows: list) -> None:
        """Add rows (dicts with the same columns) and write the whole table atomically."""
        if not rows:
            return
        rows = [{k: str(v) for k, v in r.items()} for r in rows]
        self.rows.extend(rows)
        self._keys.update(self._key_of(r) for r in rows)
        columns = list(self.rows[0].keys())
        for row in self.rows:
            columns.extend(c for c in row if c not in columns)
        buffer = StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        _atomic_write(self.path, buffer.getvalue())
