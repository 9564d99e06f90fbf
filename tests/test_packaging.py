"""The installed package carries what a checkout has: a wheel built from this checkout,
installed into a fresh venv outside it, lists the built-in scenarios (kept in the top-level
scenarios/ folder, mapped into the package by setup.py) and runs one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.packaging


def _fresh_venv(where: Path) -> Path:
    """A venv without pip; the installed dependencies (click, rich, ...) are borrowed from
    this interpreter through a .pth line, not lockprobe itself: the wheel is installed first."""
    try:
        venv.EnvBuilder(with_pip=False).create(where)
    except Exception as error:  # pragma: no cover - depends on the machine
        pytest.skip(f"cannot create a venv here: {error}")
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "borrowed_dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n", encoding="utf-8"
    )
    return python


def test_wheel_installed_outside_the_checkout_has_the_builtin_scenarios(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("sqlite_lockprobe-*.whl")
    python = _fresh_venv(tmp_path / "venv")
    # pip --python: this pip installs into the fresh venv, console script included.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            # lockprobe may be installed where the dependencies are borrowed from (CI's own
            # `pip install .`): pip would call the wheel installed already and skip it.
            "--ignore-installed",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def lockprobe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python.with_name("lockprobe")), *args],
            cwd=outside,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    where = subprocess.run(
        [str(python), "-c", "import sqlite_lockprobe; print(sqlite_lockprobe.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(tmp_path / "venv")), where

    listed = lockprobe("scenarios")
    assert listed.returncode == 0, listed.stderr
    for scenario in (ROOT / "scenarios").glob("*.toml"):
        assert scenario.stem in listed.stdout

    report = outside / "healthy.json"
    ran = lockprobe("run", "healthy", "-q", "--json", str(report), "--expect", "healthy")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(report.read_text())["scenario"]["name"] == "healthy"
