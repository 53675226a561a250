#!/usr/bin/env python3
"""The project's two entry points, runnable with nothing but Python 3.11 and pip.

    python3 dev.py run    # the main job: servers, producer, workers, Postgres, live view
    python3 dev.py test   # lint, type-check the core, check the layering, run the test suite

Both create or refresh `.venv` first: the project is (re)installed whenever `pyproject.toml`
changes, so a fresh checkout and an old one behave the same. Only the standard library is used
here, because this file runs before anything is installed.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".fraudstream-install-stamp"
EXTRAS = "dev,pipeline,spark"


def _install_fingerprint() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(EXTRAS.encode())
    return digest.hexdigest()


def ensure_environment() -> None:
    """Create the virtualenv and install the project when missing or out of date."""
    if not (BIN / "python").exists():
        print("» creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    wanted = _install_fingerprint()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("» installing fraudstream and its dependencies into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-q", "-e", f".[{EXTRAS}]"], check=True, cwd=ROOT)
    STAMP.write_text(wanted)


def ensure_openmp() -> None:
    """LightGBM's wheel links the system's OpenMP runtime (libgomp1), which a bare machine may
    lack: installed with apt when running as root, otherwise named so a person can install it."""
    if ctypes.util.find_library("gomp"):
        return
    apt = shutil.which("apt-get")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and apt:
        print("» installing libgomp1 (OpenMP, needed by LightGBM)", flush=True)
        subprocess.run([apt, "update", "-qq"], check=True)
        subprocess.run([apt, "install", "-y", "-qq", "libgomp1"], check=True)
    else:
        print("! libgomp1 (OpenMP) is missing: LightGBM models need it; install it", flush=True)


TEST_PACKAGES = {
    "chromium": "chromium",  # the dashboard's browser test (headless)
    "prometheus": "prometheus",  # scraping the workers with the shipped scrape configuration
    "docker-compose": "docker-compose",  # validating deploy/compose.yaml (no engine needed)
    "java": "openjdk-17-jre-headless",  # the Spark runner's tests (PySpark needs a JVM)
}
"""Debian packages some tests need, by the command each provides."""


def ensure_test_packages() -> None:
    """Install the Debian packages the tests need when running as root (as CI does);
    otherwise name them, since the tests that need them fail without them."""
    missing = sorted({pkg for command, pkg in TEST_PACKAGES.items() if not shutil.which(command)})
    if not missing:
        return
    apt = shutil.which("apt-get")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and apt:
        print(f"» installing {' '.join(missing)} (Debian packages the tests use)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update", "-qq"], check=True, env=env)
        install = [apt, "install", "-y", "-qq", "--no-install-recommends", *missing]
        subprocess.run(install, check=True, env=env)
    else:
        print(
            f"! missing Debian packages {' '.join(missing)}: the tests that need them will fail;"
            f" install with: sudo apt-get install --no-install-recommends {' '.join(missing)}",
            flush=True,
        )


def _run(*argv: str) -> int:
    print("»", " ".join(argv), flush=True)
    return subprocess.run(argv, cwd=ROOT, check=False).returncode


def run_main_job(args: list[str]) -> int:
    return _run(str(BIN / "fraudstream"), "run", *args)


def run_tests(args: list[str]) -> int:
    ensure_test_packages()
    checks = [
        (str(BIN / "ruff"), "check", "src", "tests", "bench", "dev.py"),
        (str(BIN / "mypy"),),
        (str(BIN / "lint-imports"),),
    ]
    for check in checks:
        code = _run(*check)
        if code != 0:
            return code
    return _run(str(BIN / "python"), "-m", "pytest", "-n", "2", *args)


def main() -> int:
    commands = {"run": run_main_job, "test": run_tests}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    ensure_environment()
    ensure_openmp()
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
