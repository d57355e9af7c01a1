"""Measured decisions kept on disk, so the same model on the same machine gets the same code.

A measured pass (FXG201) asks `lookup(key)` before it times anything and `store(key, record)`
after. A key names what the decision depends on: the site's signature (shapes, strides,
dtype, the ops timed), the device (CPU model and thread count, or GPU name) and the torch
version. Records are small JSON dicts, one file per namespace in the user's cache
directory: `$FXGRAD_CACHE_DIR` if set, else `$XDG_CACHE_HOME/fxgrad`, else
`~/.cache/fxgrad`. Delete the file to measure again.

The cache never breaks a fix: a missing, unreadable or corrupt file reads as empty, and a
failed write (read-only directory, full disk) is ignored. Writes go to a temporary file in
the same directory and are renamed into place, so a reader never sees half a file; entries
that another process wrote meanwhile are merged in, not lost.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = 1  # bump when records change meaning; older files are then ignored


def cache_dir() -> Path:
    """The directory decisions are kept in (created only when something is written)."""
    explicit = os.environ.get("FXGRAD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "fxgrad"
    return Path.home() / ".cache" / "fxgrad"


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_key(device: torch.device | str) -> str:
    """What a timing on `device` depends on besides the code: the chip, threads, torch."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        chip = torch.cuda.get_device_name(index)
    elif device.type == "cpu":
        chip = f"{_cpu_name()}, {torch.get_num_threads()} threads"
    else:
        chip = device.type
    return f"{device.type}: {chip}; torch {torch.__version__}"


def digest(parts: Any) -> str:
    """A short stable hash of a repr-able key."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


class DecisionCache:
    """One namespace of cached decisions (one JSON file), read once and written on flush."""

    def __init__(self, namespace: str, directory: Path | None = None) -> None:
        self.path = (directory or cache_dir()) / f"{namespace}.json"
        self._entries: dict[str, dict] | None = None
        self._new: dict[str, dict] = {}

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return {}  # missing or corrupt: as if empty
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict)}

    def lookup(self, key: str) -> dict | None:
        """The record stored under key, or None."""
        if key in self._new:
            return self._new[key]
        if self._entries is None:
            self._entries = self._read()
        return self._entries.get(key)

    def store(self, key: str, record: dict) -> None:
        """Keep record under key; it reaches the file on `flush()`."""
        self._new[key] = record

    def flush(self) -> bool:
        """Write new records atomically, merged with what the file holds now; False if not."""
        if not self._new:
            return True
        merged = {**self._read(), **self._new}
        text = json.dumps({"format": FORMAT, "entries": merged}, indent=1, sort_keys=True)
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            return False  # an unwritable cache costs re-measuring next time, nothing more
        self._entries, self._new = merged, {}
        return True
