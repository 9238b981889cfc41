"""synth: a batch engine for synthetic training images (spec -> plan -> generate -> shards)."""


def __getattr__(name: str) -> str:
    # The version is looked up on first use: importlib.metadata costs a command that never
    # prints it (synth validate) a noticeable share of its time.
    if name != "__version__":
        raise AttributeError(f"module 'synth' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("synth")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0+source"
    globals()["__version__"] = found
    return found
