"""Versions of the libraries that decide the numbers, recorded with every run and adapter."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from synth import __version__

_RECORDED = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "ray",
    "pyarrow",
    "pydantic",
    # The evaluation's figures also depend on these.
    "numpy",
    "scikit-learn",
    "torchmetrics",
    "prdc",
)


def library_versions() -> dict[str, str]:
    versions = {"synth": __version__, "python": platform.python_version()}
    for package in _RECORDED:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions
