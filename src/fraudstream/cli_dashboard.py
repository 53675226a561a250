"""`fraudstream dashboard`, and the dashboard as a child process of `fraudstream run`.

The dashboard is a Streamlit server (`python -m streamlit run dashboard/app.py`), a process of
its own: Streamlit owns its event loop and signal handling, and a crash of the page must not
take the pipeline with it. It gets the settings the way a worker does, as `FRAUDSTREAM_*`
variables (`runners.local.worker_environment`), so it reads the very database this process
resolved, the embedded stack's included.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from fraudstream.cli_support import console, settings_or_exit
from fraudstream.config import Settings

DEFAULT_PORT = 8501
STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0


def dashboard_command(port: int, address: str) -> list[str]:
    """The Streamlit command line: headless (no browser opened, no e-mail prompt), no usage
    statistics sent, no file watcher (nothing reloads in production)."""
    from fraudstream.dashboard import APP_PATH  # noqa: PLC0415 - only its path, no Streamlit

    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.port", str(port), "--server.address", address,
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer",
    ]  # fmt: skip


def start_dashboard(
    settings: Settings, port: int, log_path: Path | None, address: str = "127.0.0.1"
) -> subprocess.Popen[bytes]:
    """Start the dashboard server with `settings` (their database URL resolved by the caller),
    logging to `log_path` (None: this process's output). Returns at once; see `wait_healthy`."""
    from fraudstream.runners.local import worker_environment  # noqa: PLC0415

    command = dashboard_command(port, address)
    environment = worker_environment(settings)
    if log_path is None:
        return subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL)  # noqa: S603
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and Streamlit's module
            command, env=environment, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def dashboard_url(address: str, port: int) -> str:
    host = "127.0.0.1" if address in ("0.0.0.0", "") else address  # noqa: S104 - a comparison
    return f"http://{host}:{port}"


def wait_healthy(
    process: subprocess.Popen[bytes], url: str, timeout_s: float = START_TIMEOUT_S
) -> bool:
    """Wait until the server answers its health check; False if it exits or takes too long."""
    import httpx  # noqa: PLC0415 - only when a dashboard starts, not for every command

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=2).text.strip() == "ok":
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def stop_dashboard(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait, SIGKILL if it has not left in time; returns the exit code."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def dashboard(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = DEFAULT_PORT,
    address: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
) -> None:
    """The live dashboard: KPIs, volume and flags over time, the alert feed, rules and their
    precision, scores, a map and a card drill-down, read from PostgreSQL; until Ctrl-C."""
    from fraudstream.stack import running_stack_settings  # noqa: PLC0415

    settings = running_stack_settings(settings_or_exit())
    if settings.postgres.url is None:
        console.print(
            "[red]no database:[/red] run `fraudstream stack` in this project, "
            "or set FRAUDSTREAM_POSTGRES__URL"
        )
        raise typer.Exit(2)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    process = start_dashboard(settings, port, None, address)
    url = dashboard_url(address, port)
    try:
        if not wait_healthy(process, url):
            console.print(f"[red]the dashboard did not start on {url}: see its output above[/red]")
            raise typer.Exit(1)
        console.print(f"dashboard on {url} (Ctrl-C stops it)")
        while not stopping.is_set() and process.poll() is None:
            stopping.wait(0.5)
    finally:
        code = stop_dashboard(process)
    if not stopping.is_set():
        console.print(f"[red]the dashboard exited on its own with {code}[/red]")
        raise typer.Exit(1)
