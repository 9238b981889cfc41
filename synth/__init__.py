"""synth: a batch engine for synthetic training images (spec -> plan -> generate -> shards)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("synth")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
