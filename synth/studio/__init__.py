"""`synth studio`: a local web app over finished (or running) runs: browse and filter their
images, look at one beside its nearest real image, compare renders, generate with the engine's
own code, and read the report. Offline: every asset is in static/."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

from synth.errors import OutputError, SpecError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int, token: str | None) -> None:
    """Refuse what would expose the studio or cannot bind, before anything loads."""
    if not is_loopback(host) and not token:
        raise SpecError(
            f"--host {host}: serves the studio to the network; set --token SECRET too, so "
            "every request must carry it (or keep the default 127.0.0.1)"
        )
    if not 0 < port < 65536:
        raise SpecError(f"--port {port}: give a port from 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OutputError(
                f"--port {port}: cannot listen on {host} ({err.strerror}); choose another "
                "with --port, or stop what uses it"
            ) from None


def serve(folders: list[Path], host: str, port: int, token: str | None) -> None:
    """Open the runs and serve until Ctrl-C."""
    import uvicorn

    from synth.studio.app import LOOPBACK, create_app
    from synth.studio.catalog import Catalog, open_runs

    check_address(host, port, token)
    catalog = Catalog(open_runs(folders))
    app = create_app(catalog, token=token, allowed_hosts=LOOPBACK if is_loopback(host) else None)
    if not is_loopback(host):
        print(
            f"synth studio: warning: serving on {host}, reachable from the network; every "
            "request needs the token",
            file=sys.stderr,
        )
    shown = "localhost" if is_loopback(host) else host
    suffix = f"?token={token}" if token else ""
    names = ", ".join(catalog.runs)
    print(f"synth studio: http://{shown}:{port}/{suffix} ({names}); Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
