"""The one error family users see. Each message names the thing that is wrong and the fix."""


class SynthError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""

    exit_code = 1


class SpecError(SynthError):
    """The spec file is malformed or inconsistent."""

    exit_code = 2


class PlanError(SpecError):
    """The spec is well formed, but its target cannot be reached from the real data."""


class SourceError(SynthError):
    """The real data the spec points at is missing or malformed."""

    exit_code = 2


class ModelError(SynthError):
    """The model folder or a LoRA adapter cannot be used."""

    exit_code = 2


class OutputError(SynthError):
    """The output folder cannot be written, or holds a run of a different spec."""

    exit_code = 2


class GenerationError(SynthError):
    """Generation failed for a reason that re-running will not fix by itself."""

    exit_code = 1


class RequestError(SynthError):
    """A studio request that cannot be served: names the field (a parameter, `run`,
    `sample_id`) and carries the HTTP status to answer with."""

    exit_code = 2

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status


class Terminated(KeyboardInterrupt):
    """SIGTERM, as cluster schedulers send it: handled exactly like Ctrl-C (KeyboardInterrupt),
    so every write in progress is undone and the run is recorded as interrupted."""
