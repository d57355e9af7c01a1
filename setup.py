"""Which packages ship: fxgrad with its sub-packages, and passes/ as fxgrad.passes.

Everything else lives in pyproject.toml. The list is found, not written out, so a pass that
is a package (a folder under passes/) ships without an edit here.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["fxgrad", "fxgrad.*"]),
        "fxgrad.passes",
        *(f"fxgrad.passes.{name}" for name in find_packages("passes")),
    ]
)
