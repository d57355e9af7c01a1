"""The decision cache under stress: concurrent writers, killed writers, edited or foreign
records, no home directory, and sites the measuring budget left out.

tests/test_contiguity.py tests what FXG201 caches; here the cache must keep every record
that concurrent processes write, ignore (with one warning) what it cannot trust, and never
make a fix fail. tests/conftest.py gives every test an empty cache directory.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pwd
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import fx, nn

import fxgrad
from fxgrad import decision_cache
from fxgrad.context import Context
from fxgrad.decision_cache import CacheWarning, DecisionCache

fxg201 = importlib.import_module("fxgrad.passes.noncontiguous_cat_input")
# A test replaces `_budget` where `_decide` reads it: in the pass's cache module.
fxg201_cache = importlib.import_module("fxgrad.passes.noncontiguous_cat_input.cache")


class TwoCats(nn.Module):
    """Two cats of different layouts: two records in the cache."""

    def forward(self, x, y):
        return torch.cat([x.t(), y], dim=0) * 2, torch.cat([y.t(), x], dim=0) * 3


def _inputs():
    # Transposed, just enough elements to be timed (MIN_ELEMENTS).
    return (torch.randn(256, 256, requires_grad=True), torch.randn(256, 256))


def _timer():
    """An injected timer: `.contiguous()` twice as fast. Every timer it makes has the same
    name, so they share cached decisions; `calls` lists what it timed."""
    calls: list[str] = []

    def measure(key, fn):
        calls.append(key)
        return 2e-3 if key.endswith(":original") else 1e-3

    return measure, calls


def _fix(measure):
    model, inputs = TwoCats(), _inputs()
    fixed = fxgrad.fix(model, inputs, select=["FXG201"], measure=measure)
    torch.testing.assert_close(fixed(*inputs), model(*inputs))
    return fixed


# ---------------------------------------------------------------------------------------
# Concurrent and killed writers

_WRITER = """
import importlib.util, sys, time
from pathlib import Path

source, directory, sync, me, n, lock = sys.argv[1:]
spec = importlib.util.spec_from_file_location("decision_cache", source)
cache_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cache_module)
if lock == "lock file":
    cache_module.fcntl = None  # as where fcntl is missing
(Path(sync) / f"ready-{me}").touch()
while not (Path(sync) / "go").exists():
    time.sleep(0.001)
for i in range(int(n)):
    cache = cache_module.DecisionCache("t", Path(directory))
    cache.lookup("anything")  # read the file first, as the pass does
    cache.store(f"{me}-{i}", {"writer": me, "i": i})
    assert cache.flush(), "a write failed"
"""


@pytest.mark.parametrize("lock", ["flock", "lock file"])
def test_concurrent_writers_lose_nothing(tmp_path, lock):
    directory, sync = tmp_path / "cache", tmp_path / "sync"
    directory.mkdir()
    sync.mkdir()
    writers, keys = 4, 50
    # The module alone, without torch: four processes start in a fraction of a second.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, decision_cache.__file__, str(directory)]
            + [str(sync), str(w), str(keys), lock],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    deadline = time.monotonic() + 60
    while len(list(sync.glob("ready-*"))) < writers and time.monotonic() < deadline:
        time.sleep(0.01)
    (sync / "go").touch()  # all at once
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    cache = DecisionCache("t", directory)
    kept = [(w, i) for w in range(writers) for i in range(keys) if cache.lookup(f"{w}-{i}")]
    assert len(kept) == writers * keys
    assert sorted(p.name for p in directory.iterdir()) in (["t.json", "t.json.lock"], ["t.json"])


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    old = time.time() - decision_cache.STALE_S - 60
    stale = tmp_path / ".t.json.k1ll3d.tmp"
    earlier = tmp_path / ".t.json.x8r2k1qz"  # named as earlier versions named them
    fresh = tmp_path / ".t.json.wr1t1ng.tmp"  # another process may be writing it now
    other = tmp_path / "notes.txt"
    for path in (stale, earlier, fresh, other):
        path.write_text("x" * 1000)
    for path in (stale, earlier, other):
        os.utime(path, (old, old))
    cache = DecisionCache("t", tmp_path)
    cache.store("k", {"v": 1})
    assert cache.flush()
    assert not stale.exists() and not earlier.exists()
    assert fresh.exists() and other.exists()
    assert DecisionCache("t", tmp_path).lookup("k") == {"v": 1}


def test_the_file_keeps_the_records_stored_last(monkeypatch, tmp_path):
    monkeypatch.setattr(decision_cache, "MAX_ENTRIES", 10)
    for i in range(15):
        cache = DecisionCache("t", tmp_path)
        cache.store(f"k{i}", {"v": i})
        assert cache.flush()
    cache = DecisionCache("t", tmp_path)
    assert [i for i in range(15) if cache.lookup(f"k{i}")] == list(range(5, 15))


def test_a_write_that_cannot_get_the_lock_is_given_up(monkeypatch, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    monkeypatch.setattr(decision_cache, "LOCK_TIMEOUT_S", 0.2)
    with open(tmp_path / "t.json.lock", "w") as held:  # another writer, stopped mid-write
        fcntl.flock(held, fcntl.LOCK_EX)
        cache = DecisionCache("t", tmp_path)
        cache.store("k", {"v": 1})
        start = time.monotonic()
        assert cache.flush() is False
        assert time.monotonic() - start < 2
    assert not (tmp_path / "t.json").exists()
    assert cache.flush() and DecisionCache("t", tmp_path).lookup("k") == {"v": 1}


def test_without_flock_a_killed_writers_lock_file_is_broken(monkeypatch, tmp_path):
    monkeypatch.setattr(decision_cache, "fcntl", None)
    held = tmp_path / "t.json.lock-held"
    held.touch()
    old = time.time() - decision_cache.LOCK_STALE_S - 1
    os.utime(held, (old, old))
    cache = DecisionCache("t", tmp_path)
    cache.store("k", {"v": 1})
    assert cache.flush()
    assert not held.exists()
    assert DecisionCache("t", tmp_path).lookup("k") == {"v": 1}


# ---------------------------------------------------------------------------------------
# No home directory


def _no_home(monkeypatch, tmp_path):
    """As in a container: no $HOME, no passwd entry for the user; tmp_path for /tmp."""
    for variable in ("FXGRAD_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(variable, raising=False)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError):
        Path.home()


def test_without_a_home_directory_the_cache_is_in_a_private_temporary_one(monkeypatch, tmp_path):
    _no_home(monkeypatch, tmp_path)
    directory = decision_cache.cache_dir()
    assert directory == tmp_path / f"fxgrad-cache-{os.getuid()}"
    measure, calls = _timer()
    _fix(measure)
    assert (directory / "fxg201.json").exists()
    assert directory.stat().st_mode & 0o777 == 0o700
    calls.clear()
    _fix(measure)
    assert calls == []  # cached there


def test_with_no_usable_directory_the_cache_is_off(monkeypatch, tmp_path):
    _no_home(monkeypatch, tmp_path)
    shared = tmp_path / f"fxgrad-cache-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could have put records there
    assert decision_cache.cache_dir() is None
    measure, calls = _timer()
    fixed = _fix(measure)
    assert calls and len(fixed.report.applied) == 2
    assert list(shared.iterdir()) == []
    cache = DecisionCache("fxg201")
    cache.store("k", {"v": 1})
    assert cache.flush() is False


# ---------------------------------------------------------------------------------------
# Records that cannot be trusted


def _cache_file() -> Path:
    return decision_cache.cache_dir() / "fxg201.json"


def _entries() -> dict:
    return json.loads(_cache_file().read_text())["entries"]


def _edit_records(edit) -> None:
    data = json.loads(_cache_file().read_text())
    data["entries"] = {k: edit(dict(v)) for k, v in data["entries"].items()}
    _cache_file().write_text(json.dumps(data))


def _nan(r):
    r["times"]["original"] = math.nan
    return r


def _negative(r):
    r["times"]["contiguous"] = -1.0
    return r


BAD_RECORDS = {
    "a variant the site lacks": lambda r: {**r, "choice": "permuted"},
    "no times": lambda r: {**r, "times": {}},
    "a NaN time": _nan,
    "a negative time": _negative,
    "a string time": lambda r: {**r, "times": {k: str(t) for k, t in r["times"].items()}},
    "a choice its times contradict": lambda r: {**r, "choice": "original"},
    "escape codes in the label": lambda r: {**r, "label": "\x1b[2J\x1b[31mcat + mul fwd"},
    "a label that is no label": lambda r: {**r, "label": "the forward was rolled back"},
    "a budget left unmeasured": lambda r: {
        **r,
        "choice": "original",
        "times": {},
        "why_unmeasured": "the measuring budget (0.05 s) was spent",
    },
    "foreign": lambda r: {"answer": 42},
}


@pytest.mark.parametrize("edit", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_an_invalid_record_is_ignored_with_one_warning_and_measured_again(edit):
    measure, calls = _timer()
    first = _fix(measure)
    assert len(first.report.applied) == 2 and len(_entries()) == 2
    _edit_records(edit)  # both records
    calls.clear()
    with pytest.warns(CacheWarning) as caught:
        fixed = _fix(measure)
    warned = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(warned) == 1  # once per file, not per record
    assert "fxg201.json" in str(warned[0].message)
    assert calls  # measured again
    assert fixed.code == first.code and len(fixed.report.applied) == 2
    for record in _entries().values():  # replaced by the new measurements
        assert record["choice"] == "contiguous" and record["times"]["contiguous"] == 1e-3
    calls.clear()
    _fix(measure)
    assert calls == []  # and those are used


def test_invalid_records_are_dropped_even_when_nothing_is_measured():
    measure, _ = _timer()
    _fix(measure)
    _edit_records(BAD_RECORDS["a NaN time"])
    gm = fx.symbolic_trace(TwoCats())
    ctx = Context(example_inputs=list(_inputs()), measure=measure, measure_enabled=False)
    with pytest.warns(CacheWarning):
        changes = fxg201.run(gm, ctx)
    assert [c.applied for c in changes] == [False, False]
    assert _entries() == {}


def test_cache_contents_never_reach_the_report_raw():
    measure, _ = _timer()
    _fix(measure)

    def hostile(r):
        r["label"] = "\x1b]0;owned\x07\x1b[31mcat + mul fwd\r\n"
        r["times"] = {"original": math.nan, "contiguous": -5.0}
        return r

    _edit_records(hostile)
    with pytest.warns(CacheWarning) as caught:
        fixed = _fix(measure)
    report = fixed.report
    for text in (str(report), report.table(verbose=True), report.to_json(), *map(str, caught)):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
        assert "nan" not in text.lower() and "owned" not in text
    for change in report.changes:
        assert not re.search(r"-\d", change.note)  # no negative time


def test_a_record_written_by_this_version_is_valid():
    measure, _ = _timer()
    _fix(measure)
    for record in _entries().values():
        variants = [fxg201.Variant.ORIGINAL, fxg201.Variant.CONTIGUOUS]
        decision = fxg201.Decision.from_record(record, variants)
        assert decision.choice is fxg201.Variant.CONTIGUOUS
        assert len(record["site"]) <= fxg201.SITE_TEXT_MAX


# ---------------------------------------------------------------------------------------
# The budget


def _budget_spent_by_timer(monkeypatch, state):
    state["spent"] = True  # the injected timer answers None: its budget is spent


def _budget_spent_before_timing(monkeypatch, state):
    monkeypatch.setattr(fxg201_cache, "_budget", lambda ctx, seen: fxg201.Budget(0.0))


@pytest.mark.parametrize(
    "spend", [_budget_spent_by_timer, _budget_spent_before_timing], ids=["timer", "budget"]
)
def test_sites_the_budget_left_out_are_measured_by_the_next_fix(monkeypatch, spend):
    state = {"spent": False}
    calls: list[str] = []

    def measure(key, fn):
        calls.append(key)
        if state["spent"]:
            return None
        return 2e-3 if key.endswith(":original") else 1e-3

    with monkeypatch.context() as m:
        spend(m, state)
        first = _fix(measure)
    assert first.report.applied == []
    for change in first.report.changes:
        assert "budget" in change.note and "the next fix measures it" in change.note
    state["spent"] = False
    calls.clear()
    second = _fix(measure)
    assert calls  # what the first fix could not time
    assert len(second.report.applied) == 2
    calls.clear()
    assert _fix(measure).code == second.code and calls == []
