"""The text of the `module.py` that `fix -o` writes, around fx's code for the graph.

It is Python that runs where the fixed model is loaded, not here: it rebuilds the
submodules and tensors the graph reads, imports the model's own code relative to the
written folder, and loads the weights without unpickling code. Kept in a module of its own
so that it reads as the file it becomes; `fxgrad.export_render` fills it in.
"""

from __future__ import annotations

import string

# The written module.py: fx's code for the graph (graph_forward), inside a module that
# rebuilds the submodules and tensors it reads and loads their weights. Nothing it loads
# runs pickled code: every torch.load is weights_only=True, and the only classes
# objects.pt may rebuild are the ones this file imports by name.
_MODULE = string.Template('''\
"""${class_name}: ${model} with fxgrad's rewrites applied.

Written by `fxgrad fix`. forward takes the tensors the model was captured with, in
this order: ${params}. Weights are in state_dict.pt next to this file.
"""

import importlib
import io
import importlib.util
import os
import sys

import torch
import torch.utils._pytree as _fxgrad_pytree

_HERE = os.path.dirname(os.path.abspath(__file__))


def _install(root, target, value):
    """Set root.<target> (a dotted path), creating plain modules on the way."""
    *path, leaf = target.split(".")
    for atom in path:
        if not hasattr(root, atom):
            root.add_module(atom, torch.nn.Module())
        root = getattr(root, atom)
    if isinstance(value, torch.nn.Parameter):
        root.register_parameter(leaf, value)
    elif isinstance(value, torch.Tensor):
        root.register_buffer(leaf, value)
    else:
        root.add_module(leaf, value)


def _source(name, relpath, root=None):
    """Import the model's own code the graph refers to: the file at `relpath` from this
    folder, else a file of that name in a folder on sys.path.

    A file inside a package (`root` holds its top package) is imported by its package name,
    so that its relative imports work.
    """
    if name in sys.modules:
        return sys.modules[name]
    if root is not None:
        root = os.path.normpath(os.path.join(_HERE, root))
        if os.path.isdir(root) and root not in sys.path:
            sys.path.insert(0, root)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not _names(e, name):
                raise
            raise _missing(name, relpath, package=True) from None
    path = os.path.normpath(os.path.join(_HERE, relpath))
    if not os.path.isfile(path):
        filename = os.path.basename(relpath)
        found = [os.path.join(d or os.curdir, filename) for d in sys.path if isinstance(d, str)]
        path = next((p for p in found if os.path.isfile(p)), None)
        if path is None:
            raise _missing(name, relpath, package=False)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _require(name):
    """Import a module the graph refers to; if it is missing, say how to make it importable."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if not _names(e, name):
            raise
        raise ModuleNotFoundError(
            f"The fixed model in {_HERE} needs the module {name!r}, which cannot be "
            "imported here. Install it, or put the folder that holds it on sys.path "
            "(sys.path.insert(0, FOLDER)) or on PYTHONPATH, then load the model again.",
            name=name,
        ) from None


def _names(error, name):
    """Whether a ModuleNotFoundError is about `name` (or a package above it)."""
    return error.name is not None and (name == error.name or name.startswith(error.name + "."))


def _missing(name, relpath, package):
    if package:
        top = name.split(".")[0]
        what = f"the module {name!r} of the package {top!r}"
        holder = f"the folder that holds the package {top!r}"
    else:
        what = os.path.basename(relpath)
        holder = f"the folder that holds {what}"
    return ModuleNotFoundError(
        f"The fixed model in {_HERE} needs the model's own code, {what}, which is neither "
        f"at {os.path.normpath(os.path.join(_HERE, relpath))} ({relpath} from this folder, "
        f"as when it was written) nor importable from sys.path. Put {holder} on sys.path "
        "(sys.path.insert(0, FOLDER)) or on PYTHONPATH, then load the model again.",
        name=name,
    )


def _load_objects(classes, map_location):
    """objects.pt: the submodules and values other than tensors the graph keeps.

    weights_only=True rebuilds only tensors, plain containers and the classes passed here,
    which this file imports by name; no code stored in the file runs.
    """
    path = os.path.join(_HERE, "objects.pt")
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals(classes):
            return torch.load(path, map_location=map_location, weights_only=True)
    serialization.add_safe_globals(classes)  # torch 2.4: no context manager yet
    return torch.load(path, map_location=map_location, weights_only=True)


def _materialize(module):
    """A kept submodule from objects.pt, whose weights are stored there as shapes only
    (meta tensors): empty tensors in their place, for load_state_dict to fill."""
    done = {}
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for key, t in table.items():
                if t is None or not t.is_meta:
                    continue
                if id(t) not in done:
                    empty = torch.empty(t.shape, dtype=t.dtype)
                    if isinstance(t, torch.nn.Parameter):
                        empty = torch.nn.Parameter(empty, requires_grad=t.requires_grad)
                    done[id(t)] = empty
                table[key] = done[id(t)]
    return module

${statements}

class ${class_name}(torch.nn.Module):
    def __init__(self, map_location=None):
        super().__init__()
${install}\
        state = torch.load(
            os.path.join(_HERE, 'state_dict.pt'), map_location=map_location, weights_only=True
        )
        self.load_state_dict(state)
        self.train(${training})

${forward}
${graph_forward}''')


# forward: the graph's flat outputs, rebuilt into the model's output structure.
_FORWARD = string.Template("""\
    def forward(${signature}):
        out = self.graph_forward(${params})
        return _fxgrad_pytree.tree_unflatten(list(out), _OUT_SPEC)
""")


# forward for outputs whose structure pytree cannot write: the flat tuple.
_FORWARD_FLAT = string.Template("""\
    def forward(${signature}):
        return self.graph_forward(${params})
""")
