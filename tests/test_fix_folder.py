"""What `fxgrad fix -o DIR` writes, beyond computing the same as the fixed model
(tests/test_fix_output.py): it imports only what the graph uses, loads from any directory
and says what it needs when it cannot, runs no pickled code when it loads, and writes
nothing outside DIR.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import fxgrad
from fxgrad.cli import main

ROOT = Path(__file__).resolve().parents[1]
UNSAFE = f"{ROOT / 'examples' / 'unsafe_inplace.py'}:Model"


def fix(*args: str):
    """`fxgrad fix ARGS` in process, leaving sys.path as it was (the CLI puts the model's
    folder first)."""
    saved = list(sys.path)
    try:
        return CliRunner().invoke(main, ["fix", *args])
    finally:
        sys.path[:] = saved


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example") / "fixed_example"
    result = fix(UNSAFE, "-o", str(out))
    assert result.exit_code == 1, result.stderr
    return out


def test_module_py_imports_numpy_only_when_the_graph_uses_it(example_folder):
    pytest.importorskip("numpy")  # fx lists numpy among its builtins when it is installed
    text = (example_folder / "module.py").read_text()
    assert "numpy" not in text and "np." not in text


def test_module_py_loads_the_weights_with_weights_only(example_folder):
    text = (example_folder / "module.py").read_text()
    loads = [line for line in text.splitlines() if "torch.load(" in line]
    assert loads
    assert "weights_only=False" not in text
    assert text.count("weights_only=True") >= len(loads)


# ---------------------------------------------------------------------------------------
# A kept submodule of the user's class: imported by name, never unpickled as code

IMPORTS = """
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
"""
BLOCK = """

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("shift", torch.linspace(-1, 1, 8), persistent=False)
        self.scale = 0.5

    def forward(self, x):
        return torch.tanh(self.lin(x) + self.shift) * self.scale
"""
MODEL = """

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        for name in NAMES:
            self.add_module(name, Block())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for name in NAMES:
            x = checkpoint(getattr(self, name), x, use_reentrant=False)
        y = torch.sigmoid(self.head(x))
        y.mul_(2)
        return y


def inputs():
    return (torch.randn(4, 8),)
"""
CHECKPOINTED = IMPORTS + BLOCK + MODEL

LOAD_AND_COMPARE = """
import sys
from pathlib import Path

import torch

folder, check = Path(sys.argv[1]), torch.load(sys.argv[2])
sys.path.insert(0, str(folder.parent))
module = __import__(folder.name)
model = getattr(module, check["class_name"])()
torch.testing.assert_close(model(check["x"]), check["expected"])
print("loaded and matched")
"""


def _model_file(folder: Path, stem: str, names: list[str], beside: str = "") -> Path:
    """A model that keeps a Block per name inside checkpoint(); the Block class is in the
    model file, or in a module `beside` it that the model file imports."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.py"
    if beside:
        (folder / f"{beside}.py").write_text(IMPORTS + BLOCK)
        path.write_text(f"NAMES = {names!r}\n" + IMPORTS + f"from {beside} import Block\n" + MODEL)
    else:
        path.write_text(f"NAMES = {names!r}\n" + CHECKPOINTED)
    return path


def _expect(model_file: Path, out: Path, check: Path) -> dict:
    """What the written folder must compute: the model with the written weights, fixed in
    this process, on fresh inputs; stored for a loader in another process."""
    namespace = runpy.run_path(str(model_file))
    model = namespace["Model"]()
    model.load_state_dict(torch.load(out / "state_dict.pt"))
    x = torch.randn(4, 8)
    expected = fxgrad.fix(model, (x,))(x).detach()
    class_name = next(
        line.split()[1].split("(")[0]
        for line in (out / "module.py").read_text().splitlines()
        if line.startswith("class Fixed")
    )
    torch.save({"x": x, "expected": expected, "class_name": class_name}, check)
    return {"x": x, "expected": expected}


def _python(code: str, *args: str, cwd: Path, env: dict | None = None):
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *(env or {}).get("PYTHONPATH", [])])
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_printed_instructions_load_the_folder_from_another_directory(tmp_path, monkeypatch):
    model_file = _model_file(
        tmp_path / "project", "printed_model", ["block"], beside="printed_blocks"
    )
    monkeypatch.chdir(tmp_path / "project")
    result = fix("printed_model.py:Model", "-o", os.path.join("..", "written", "fixed_printed"))
    assert result.exit_code == 1, result.stderr
    out = tmp_path / "written" / "fixed_printed"
    _expect(model_file, out, tmp_path / "check.pt")
    snippet = result.stdout.split("load it with:\n", 1)[1]
    snippet = textwrap.dedent("\n".join(snippet.splitlines()[:3]))
    code = snippet + textwrap.dedent(
        """
        import torch
        check = torch.load(sys.argv[1])
        torch.testing.assert_close(model(check["x"]), check["expected"])
        print("loaded and matched")
        """
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _python(code, str(tmp_path / "check.pt"), cwd=elsewhere)
    assert done.stdout.strip() == "loaded and matched", done.stderr


def test_a_moved_folder_says_which_code_it_needs_and_loads_once_importable(tmp_path):
    model_file = _model_file(tmp_path / "project", "moved_model", ["block"])
    out = tmp_path / "project" / "fixed_moved"
    result = fix(f"{model_file}:Model", "-o", str(out))
    assert result.exit_code == 1, result.stderr
    _expect(model_file, out, tmp_path / "check.pt")
    for file in out.rglob("*"):  # the model's code is named relative to the folder
        assert not file.is_file() or str(tmp_path).encode() not in file.read_bytes(), file
    copy = tmp_path / "copies" / "fixed_moved"
    shutil.copytree(out, copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    missing = _python(LOAD_AND_COMPARE, str(copy), str(tmp_path / "check.pt"), cwd=elsewhere)
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: "), missing.stderr
    assert "moved_model.py" in last and "sys.path" in last and "PYTHONPATH" in last
    assert "FileNotFoundError" not in missing.stderr

    # as the message says: the folder holding moved_model.py on PYTHONPATH
    found = _python(
        LOAD_AND_COMPARE,
        str(copy),
        str(tmp_path / "check.pt"),
        cwd=elsewhere,
        env={"PYTHONPATH": [str(model_file.parent)]},
    )
    assert found.stdout.strip() == "loaded and matched", found.stderr


def test_a_plain_torch_folder_loads_anywhere(example_folder, tmp_path):
    model = runpy.run_path(str(ROOT / "examples" / "unsafe_inplace.py"))["Model"]()
    model.load_state_dict(torch.load(example_folder / "state_dict.pt"))
    x = torch.randn(4, 8)
    expected = fxgrad.fix(model, (x,))(x).detach()
    torch.save({"x": x, "expected": expected, "class_name": "FixedModel"}, tmp_path / "c.pt")
    copy = tmp_path / "copies" / "fixed_example"
    shutil.copytree(example_folder, copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _python(LOAD_AND_COMPARE, str(copy), str(tmp_path / "c.pt"), cwd=elsewhere)
    assert done.stdout.strip() == "loaded and matched", done.stderr


@pytest.mark.parametrize("kind", ["slash", "absolute"])
def test_submodule_names_never_become_paths_outside_the_folder(tmp_path, kind):
    outside = tmp_path / "outside"
    name = "a/b" if kind == "slash" else str(outside / "evil")
    model_file = _model_file(tmp_path / "project", f"named_{kind}", [name, "block"])
    out = tmp_path / "project" / "fixed_named"
    result = fix(f"{model_file}:Model", "-o", str(out))
    assert result.exit_code == 1, (result.stderr, result.exception)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted([model_file, *(p for p in out.rglob("*") if p.is_file())])
    assert not outside.exists()
    check = _expect(model_file, out, tmp_path / "check.pt")
    loaded = runpy.run_path(str(out / "module.py"))["FixedModel"]()
    torch.testing.assert_close(loaded(check["x"]), check["expected"])


PAYLOAD = """
import pathlib
import sys

import torch


class Payload:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(sys.argv[2]),))


for path in pathlib.Path(sys.argv[1]).glob("*.pt"):
    torch.save({"block": Payload(), "state": Payload()}, path)
"""


def test_a_crafted_pickle_in_the_folder_does_not_run_on_load(tmp_path):
    model_file = _model_file(tmp_path / "project", "crafted_model", ["block"])
    out = tmp_path / "project" / "fixed_crafted"
    result = fix(f"{model_file}:Model", "-o", str(out))
    assert result.exit_code == 1, result.stderr
    marker = tmp_path / "payload_ran"
    plant = _python(PAYLOAD, str(out), str(marker), cwd=tmp_path)
    assert plant.returncode == 0, plant.stderr
    assert not marker.exists()
    load = "import sys; sys.path.insert(0, sys.argv[1]); import fixed_crafted; fixed_crafted.FixedModel()"
    done = _python(load, str(out.parent), cwd=tmp_path)
    assert not marker.exists(), "the pickled payload ran"
    assert done.returncode != 0
    assert "Weights only load failed" in done.stderr, done.stderr


HOOKED = """
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def report(module, args, output):
    print("hook ran")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_forward_hook(report)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()

    def forward(self, x):
        y = torch.sigmoid(checkpoint(self.block, x, use_reentrant=False))
        y.mul_(2)
        return y
"""


def test_a_kept_submodule_that_only_pickling_could_write_is_refused(tmp_path):
    model_file = tmp_path / "hooked_model.py"
    model_file.write_text(HOOKED)
    out = tmp_path / "fixed_hooked"
    result = fix(f"{model_file}:Model", "-o", str(out), "--input", "float32[4,8]")
    assert result.exit_code == 3, (result.stderr, result.exception)
    assert result.stderr.startswith("error: The fixed graph keeps the submodule 'block'")
    assert "hooked_model.report" in result.stderr
    assert "hint: " in result.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# Writing: never over files fxgrad did not write, and all or nothing


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_fix_refuses_to_overwrite_files_it_did_not_write(tmp_path):
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("VERSION = 1  # the package's own\n")
    (package / "other.py").write_text("x = 1\n")
    before = _snapshot(package)
    refused = fix(UNSAFE, "-o", str(package))
    assert refused.exit_code == 2, (refused.stderr, refused.exception)
    assert refused.stderr.startswith("error: ")
    assert "__init__.py" in refused.stderr and "--force" in refused.stderr
    assert _snapshot(package) == before

    forced = fix(UNSAFE, "-o", str(package), "--force")
    assert forced.exit_code == 1, forced.stderr
    assert (package / "__init__.py").read_text() == "from .module import FixedModel\n"
    assert (package / "other.py").read_text() == "x = 1\n"
    model = runpy.run_path(str(package / "module.py"))["FixedModel"]()
    assert model(torch.randn(4, 8)).shape == (4, 4)


def test_fix_rewrites_its_own_output_but_not_once_edited(tmp_path):
    out = tmp_path / "fixed_again"
    assert fix(UNSAFE, "-o", str(out)).exit_code == 1
    again = fix(UNSAFE, "-o", str(out))
    assert again.exit_code == 1, again.stderr
    with open(out / "module.py", "a") as f:
        f.write("# edited by hand\n")
    edited = fix(UNSAFE, "-o", str(out))
    assert edited.exit_code == 2
    assert "module.py" in edited.stderr and "--force" in edited.stderr
    assert (out / "module.py").read_text().endswith("# edited by hand\n")


def test_write_folder_takes_force(tmp_path):
    from fxgrad.export import write_folder

    fixed = _fixed_example()
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "state_dict.pt").write_bytes(b"not fxgrad's")
    with pytest.raises(fxgrad.FxgradError, match="force=True"):
        write_folder(fixed, folder)
    assert (folder / "state_dict.pt").read_bytes() == b"not fxgrad's"
    assert write_folder(fixed, folder, force=True) == "FixedModel"
    assert set(torch.load(folder / "state_dict.pt")) == set(fixed.state_dict())


def _fixed_example():
    namespace = runpy.run_path(str(ROOT / "examples" / "unsafe_inplace.py"))
    return fxgrad.fix(namespace["Model"](), namespace["inputs"]())


def _failing_save(monkeypatch):
    """torch.save that leaves half a file and fails, as a full disk would."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_failed_write_leaves_no_folder_and_no_leftovers(tmp_path, monkeypatch):
    from fxgrad.export import write_folder

    fixed = _fixed_example()
    _failing_save(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write_folder(fixed, tmp_path / "new" / "fixed_model")
    assert list((tmp_path / "new").iterdir()) == []


def test_a_failed_rewrite_leaves_the_earlier_output_as_it_was(tmp_path, monkeypatch):
    from fxgrad.export import write_folder

    fixed = _fixed_example()
    folder = tmp_path / "fixed_model"
    write_folder(fixed, folder)
    (folder / "notes.txt").write_text("mine\n")
    before = _snapshot(folder)
    _failing_save(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write_folder(fixed, folder)
    assert _snapshot(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed_model"]


def test_a_rewrite_removes_files_only_the_earlier_output_had(tmp_path):
    model_file = _model_file(tmp_path / "project", "stale_model", ["block"])
    out = tmp_path / "fixed_stale"
    assert fix(f"{model_file}:Model", "-o", str(out)).exit_code == 1
    assert (out / "objects.pt").exists()
    result = fix(UNSAFE, "-o", str(out))  # keeps no submodule: no objects.pt
    assert result.exit_code == 1, result.stderr
    assert sorted(p.name for p in out.iterdir() if p.name != "__pycache__") == [
        "__init__.py",
        "fxgrad-manifest.json",
        "module.py",
        "state_dict.pt",
    ]
