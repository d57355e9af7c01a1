"""Measured decisions kept on disk, so the same model on the same machine gets the same code.

A measured pass (FXG201) asks `lookup(key)` before it times anything and `store(key, record)`
after. A key names what the decision depends on: the site's signature (shapes, strides,
dtype, the ops timed), the device (CPU model and thread count, or GPU name) and the torch
version. Records are small JSON dicts, one file per namespace in the user's cache
directory: `$FXGRAD_CACHE_DIR` if set, else `$XDG_CACHE_HOME/fxgrad`, else
`~/.cache/fxgrad`, else (no home directory, as in some containers) `fxgrad-cache-<uid>` in
the temporary directory. With no usable directory nothing is cached. Delete the file to
measure again.

The cache never breaks a fix, and what it reads back decides nothing unchecked:
- A missing, unreadable or corrupt file reads as empty; a failed write (read-only
  directory, full disk, a lock not had within `LOCK_TIMEOUT_S`) is ignored. Either costs
  measuring again, nothing more.
- The pass checks each record it looks up against the site it is for. One it cannot use
  (another version's, edited, a variant the site does not have, a time that is not a
  finite non-negative number) it hands to `reject()`: the record counts as absent, so the
  site is measured again and the record replaced, and one warning names the file.
- Writers take a lock beside the file (`<namespace>.json.lock`: `fcntl.flock`, or where
  that is missing a lock file created exclusively), read the file, merge their records in
  and rename a temporary file in the same directory into place. A reader never sees half
  a file, and records that other processes wrote meanwhile are kept, not lost.
- A temporary file that a killed writer left behind is removed by a later write once it
  is older than `STALE_S`. The file keeps the `MAX_ENTRIES` records stored last, so it
  stays small.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import json
import os
import platform
import random
import stat
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import fcntl
except ImportError:  # Windows: the exclusive lock file below stands in
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import torch

FORMAT = 1  # bump when records change meaning; older files are then ignored

MAX_ENTRIES = 2000
"""Records a file keeps; writing more drops the ones stored first (about 0.3 kB each)."""

STALE_S = 600.0
"""A temporary file this old is a killed writer's: the next write removes it."""

LOCK_TIMEOUT_S = 5.0
"""A write waits this long for the lock, then gives up (the records are measured again)."""

LOCK_STALE_S = 3.0
"""Without flock, a lock file this old is a killed writer's and is broken."""


class CacheWarning(UserWarning):
    """A record in the decision cache was ignored; what it decided is measured again."""


_warned: set[str] = set()  # files warned about in this process


def _printable(text: str) -> str:
    """text with control characters escaped, as repr() writes them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _user() -> str:
    try:
        return str(os.getuid())
    except AttributeError:  # Windows: the temporary directory is the user's own anyway
        pass
    try:
        return getpass.getuser()
    except Exception:
        return "user"


def _own_directory(path: Path) -> bool:
    """True for a directory of this user's that others cannot write to, or none yet."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True  # created on the first write, for this user only
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    getuid = getattr(os, "getuid", None)
    return getuid is None or (st.st_uid == getuid() and not st.st_mode & 0o022)


def cache_dir() -> Path | None:
    """The directory decisions are kept in (created only when something is written).

    None when there is none to use (no home directory and no private temporary one): then
    nothing is cached. Never raises.
    """
    for variable, sub in (("FXGRAD_CACHE_DIR", None), ("XDG_CACHE_HOME", "fxgrad")):
        value = os.environ.get(variable)
        if value:
            try:
                path = Path(value).expanduser()
            except (RuntimeError, KeyError, OSError):  # "~/..." without a home directory
                continue
            return path / sub if sub else path
    try:
        home = Path.home()
    except (RuntimeError, KeyError, OSError):  # no $HOME and no passwd entry
        home = None
    if home is not None and home.is_absolute():
        return home / ".cache" / "fxgrad"
    try:
        path = Path(tempfile.gettempdir()) / f"fxgrad-cache-{_user()}"
    except OSError:
        return None
    # Others can write the temporary directory: use only a folder that is this user's.
    return path if _own_directory(path) else None


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
    import torch

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
        directory = directory if directory is not None else cache_dir()
        self.path = None if directory is None else directory / f"{namespace}.json"
        self._entries: dict[str, dict] | None = None
        self._new: dict[str, dict] = {}
        self._rejected: dict[str, dict] = {}

    def _read(self) -> dict[str, dict]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return {}  # missing or corrupt: as if empty
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict)}

    def lookup(self, key: str) -> dict | None:
        """The record stored under key, or None. Check it before use: see `reject()`."""
        if key in self._new:
            return self._new[key]
        if self._entries is None:
            self._entries = self._read()
        return self._entries.get(key)

    def reject(self, key: str, why: str) -> None:
        """Count key's record as absent: the caller cannot use it (`why` says why, in words
        of the caller's, never the record's own text). The next `flush()` drops it unless
        a new record replaces it. Warns once per file."""
        record = (self._entries or {}).pop(key, None)
        if record is None:
            return
        self._rejected[key] = record
        where = str(self.path)
        if where not in _warned:
            _warned.add(where)
            warnings.warn(
                f"fxgrad: ignored a record in the decision cache {_printable(where)} ({why}); "
                "it is measured again",
                CacheWarning,
                stacklevel=2,
            )

    def store(self, key: str, record: dict) -> None:
        """Keep record under key; it reaches the file on `flush()`."""
        self._new[key] = record

    def flush(self) -> bool:
        """Merge new records into the file under the writers' lock; False if not written."""
        if not self._new and not self._rejected:
            return True
        if self.path is None:
            return False
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _locked(self.path):
                _remove_stale(self.path)
                entries = self._read()
                for key, record in self._rejected.items():
                    if entries.get(key) == record:  # not replaced by another process
                        del entries[key]
                for key in self._new:  # re-inserted last: the newest are kept longest
                    entries.pop(key, None)
                entries.update(self._new)
                if len(entries) > MAX_ENTRIES:
                    entries = dict(list(entries.items())[-MAX_ENTRIES:])
                _write(self.path, {"format": FORMAT, "entries": entries})
        except (OSError, ValueError):
            return False  # an unwritable cache costs re-measuring next time, nothing more
        self._entries, self._new, self._rejected = entries, {}, {}
        return True


def _write(path: Path, data: dict) -> None:
    """Write data as path atomically: a temporary file in the same directory, renamed."""
    text = json.dumps(data, separators=(",", ":"))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_stale(path: Path) -> None:
    """Remove temporary files of path's that are older than STALE_S (a killed writer's)."""
    prefix = f".{path.name}."  # also the names of earlier versions, which had no suffix
    now = time.time()
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        with contextlib.suppress(OSError):
            tmp = path.parent / name
            if now - tmp.stat().st_mtime > STALE_S:
                tmp.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the lock of path's writers: flock on `<path>.lock`, else an exclusive lock file.

    Raises TimeoutError (an OSError) when it is not had within LOCK_TIMEOUT_S.
    """
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    if fcntl is not None:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if _flock(fd, deadline):
                yield  # closing the descriptor releases the lock, also when killed
                return
        finally:
            os.close(fd)
    # No flock here (or not on this file system): a file only one process can create.
    held = Path(f"{path}.lock-held")
    while True:
        try:
            os.close(os.open(held, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            break
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - held.stat().st_mtime > LOCK_STALE_S:
                    held.unlink()  # its writer was killed: writes take milliseconds
                    continue
        _wait(deadline)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            held.unlink()


def _flock(fd: int, deadline: float) -> bool:
    """Lock fd exclusively; False when the file system cannot lock."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            _wait(deadline)
        except OSError:
            return False


def _wait(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError("the decision cache stayed locked")
    time.sleep(random.uniform(0.001, 0.01))
