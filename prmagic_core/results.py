"""A results table on disk that survives being killed: atomic writes, resume, settings check.

Rows are appended a batch at a time by rewriting the CSV to a temporary file and renaming it
over the old one, so the file on disk is always a complete table (a SIGKILL loses at most
the rows of the batch in flight). The settings that produced the rows are stored beside it
(``<file>.settings.json``); reopening the file with other settings is an error, never a
silent mix of two experiments. The folder is checked to take files before any work.

A table damaged outside this class (a truncated copy, rows mangled by an editor, saved by a
spreadsheet with ``;`` between fields) is recovered: every complete row is kept, the others are
set aside to be computed again, the file as found is kept beside it (``<file>.damaged``) and an
:class:`~prmagic_core.errors.InputWarning` says so. A file that is not a table at all is an error.
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
import warnings
from io import StringIO
from pathlib import Path
from typing import Callable

from .errors import InputError, InputWarning, UserError

DELIMITERS = ",;\t|"


class SettingsMismatch(UserError):
    """The results file was written with other settings than the ones asked for now."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as error:  # a full disk, say: the old file stays whole
        tmp.unlink(missing_ok=True)
        raise InputError(path, f"cannot write ({error.strerror or error})") from None


def check_writable(folder) -> None:
    """Raise an InputError now, not after hours of work, when ``folder`` cannot be made or take new files."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".prmagic-write-test-"):
            pass
    except OSError as error:
        raise InputError(folder, f"cannot write there ({error.strerror or error})") from None


def _delimiter(path: Path, first_line: str, key: tuple) -> str:
    for delimiter in DELIMITERS:
        if set(key) <= set(next(csv.reader([first_line], delimiter=delimiter), [])):
            return delimiter
    raise InputError(path, f"not a results table (its first line names no {', '.join(key)} column); "
                           "move it away or use another --out")


def read_table(path: Path, key: tuple, check_row: Callable | None = None) -> tuple:
    """(rows, delimiter, line numbers of damaged rows) of the CSV at ``path``.

    A row is damaged when it has another number of fields than the header, bytes that are not
    UTF-8 (or NUL), an empty key, or ``check_row(row)`` raises ValueError or KeyError on it.
    """
    # Undecodable bytes become U+FFFD, so binary garbage damages only the rows it lands in;
    # utf-8-sig drops the byte-order mark spreadsheets put first.
    text = path.read_bytes().decode("utf-8-sig", errors="replace").replace("\0", "\ufffd")
    if not text.strip():
        return [], ",", []
    delimiter = _delimiter(path, text.splitlines()[0], key)
    reader = csv.reader(StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header = next(reader)
    rows, damaged = [], []
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:
            damaged.append(line)
            if reader.line_num < line:  # nothing consumed: stop rather than fail on the same line forever
                break
            continue
        if not fields:
            continue
        row = dict(zip(header, fields))
        try:
            if len(fields) != len(header) or "\ufffd" in "".join(fields) or not all(row[k] for k in key):
                raise ValueError("incomplete row")
            if check_row is not None:
                check_row(row)
        except (ValueError, KeyError):
            damaged.append(line)
            continue
        rows.append(row)
    return rows, delimiter, damaged


def _keep_aside(path: Path) -> Path:
    """A copy of ``path`` as it is now, under the first free name ``<name>.damaged[.N]``."""
    backup, n = path.with_name(path.name + ".damaged"), 0
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}.damaged.{n}")
    backup.write_bytes(path.read_bytes())
    return backup


class ResultsFile:
    """Rows keyed by ``key`` columns; ``done(key)`` tells which are already there."""

    def __init__(self, path, settings: dict, key: tuple = ("episode",), check_row: Callable | None = None):
        """``check_row(row)`` raises ValueError on a stored row that cannot be used (it is then set aside)."""
        self.path = Path(path)
        self.settings_path = self.path.with_name(self.path.name + ".settings.json")
        self.key = tuple(key)
        self.check_row = check_row
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self.rows: list = []
        if self.path.is_dir():
            raise InputError(self.path, "is a folder; name the results CSV file itself")
        check_writable(self.path.parent)
        if self.path.exists():
            self._load()
        else:
            _atomic_write(self.settings_path, json.dumps(self.settings, indent=2, sort_keys=True))
        self._keys = {self._key_of(r) for r in self.rows}

    def _load(self) -> None:
        if not self.settings_path.exists():
            raise SettingsMismatch(f"{self.path} exists but {self.settings_path} does not; move it away or delete it")
        try:
            stored = json.loads(self.settings_path.read_bytes())
        except ValueError as error:
            raise InputError(self.settings_path, f"unreadable settings ({error}); move it and {self.path.name} "
                                                 "away, or use another --out") from None
        if not isinstance(stored, dict):
            raise InputError(self.settings_path, "holds no settings object; move it away, or use another --out")
        if stored != self.settings:
            diff = sorted(k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k))
            details = ", ".join(f"{k}: file {stored.get(k)!r} vs now {self.settings.get(k)!r}" for k in diff)
            raise SettingsMismatch(f"{self.path} was written with other settings ({details}); use another --out")
        self.rows, delimiter, damaged = read_table(self.path, self.key, self.check_row)
        if damaged or delimiter != ",":
            backup = _keep_aside(self.path)
            self._write()
            problems = [f"{len(damaged)} damaged rows (lines {', '.join(map(str, damaged[:5]))}"
                        f"{', ...' if len(damaged) > 5 else ''}) set aside to run again"] if damaged else []
            if delimiter != ",":
                problems.append(f"read with {delimiter!r} between fields, now rewritten with ','")
            warnings.warn(f"{self.path}: {'; '.join(problems)}; the file as found is kept as {backup}",
                          InputWarning, stacklevel=3)

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
        self._write()

    def _write(self) -> None:
        if not self.rows:
            _atomic_write(self.path, "")
            return
        columns = list(self.rows[0].keys())
        for row in self.rows:
            columns.extend(c for c in row if c not in columns)
        buffer = StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        _atomic_write(self.path, buffer.getvalue())
