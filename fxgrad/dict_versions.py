"""A dict's version tag: one C read that tells whether a dict changed since the last read.

CPython keeps a version per dict, bumped by every write; Dynamo's guards read it through
`torch._C._dynamo.guards.dict_version`. Where that is missing (or a Python has no version
tags), a Python stand-in compares keys and value identities: slower, the same answers.
"""

from __future__ import annotations

from collections.abc import Callable

# A dict's tag: equal to an earlier one until the dict is written to. Dynamo's is an int,
# the stand-in's a tuple; callers only compare them.
dict_version: Callable[[dict], object]
try:  # the dict version tags Dynamo's guards use: one C read a dict
    from torch._C._dynamo.guards import dict_version

    _probe: dict = {}
    _before = dict_version(_probe)
    _probe["x"] = 1
    if dict_version(_probe) == _before:  # a Python without version tags
        raise ImportError
except (ImportError, AttributeError, TypeError):

    def dict_version(d: dict) -> object:  # what a version tag would tell, in Python
        return (tuple(d), tuple(map(id, d.values())))
