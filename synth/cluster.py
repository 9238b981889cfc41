"""Joining Ray: a Ray of the run's own, or the cluster `compute.ray_address` names. Shared by
generation (`synth.distribute`) and the evaluation (`eval.train_arms`), which may not import
the generator's engine."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from synth.errors import SynthError
from synth.spec import Compute

PACKAGES = ("synth", "classifiers", "eval")  # this project's, as pyproject.toml installs them


@contextmanager
def ray_session(compute: Compute) -> Iterator[None]:
    """Ray up for the block, so the stages run in it share one start (seconds each on a small
    machine); shut down at the end only if this started it."""
    import ray

    started_ray = _connect(compute)
    try:
        yield
    finally:
        if started_ray:
            ray.shutdown()


def task_error(cause: BaseException, what: str, error: type[SynthError] = SynthError) -> SynthError:
    """What a Ray task raised (a RayTaskError's cause), as the one error the user sees: its own
    SynthError, or `error` saying that `what` failed and why."""
    if isinstance(cause, SynthError):
        return cause
    return error(f"{what} failed ({type(cause).__name__}: {cause})")


class _TokenAuthNotice(logging.Filter):
    """Ray's notice, on every start, that token authentication is on (its default, and the
    safe setting) is not the user's business; its warning that authentication is off is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _connect(compute: Compute) -> bool:
    import ray

    if ray.is_initialized():
        return False
    auth_logger = logging.getLogger(_RAY_AUTH_LOGGER)
    if not any(isinstance(f, _TokenAuthNotice) for f in auth_logger.filters):
        auth_logger.addFilter(_TokenAuthNotice())
    options: dict = {"include_dashboard": False, "logging_level": logging.WARNING}
    if compute.ray_address:
        # Ship the driver's packages to the cluster's workers, so they run its exact code:
        # synth, and the classifiers and eval that curation's gate and the evaluation import.
        options["runtime_env"] = {"py_modules": _package_dirs()}
    # ray.init replaces SIGTERM's handler with a plain exit; synth's own (a clean stop, as
    # for Ctrl-C) is put back.
    on_main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    try:
        # No address means a Ray of this run's own ("local"): never a cluster that `ray start`
        # or RAY_ADDRESS happens to leave on the machine, which Ray would otherwise join.
        ray.init(address=compute.ray_address or "local", **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        if compute.ray_address is None:
            raise SynthError(f"cannot start a local Ray ({err})") from None
        raise SynthError(
            f"compute.ray_address {compute.ray_address!r}: cannot join the Ray cluster ({err}); "
            "check the address, or set it to null for a local Ray"
        ) from None
    finally:
        if on_main_thread and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return True


def _package_dirs() -> list[str]:
    found = [importlib.util.find_spec(name) for name in PACKAGES]
    return [os.path.dirname(spec.origin) for spec in found if spec and spec.origin]
