#!/usr/bin/env python3
"""Set-up and run in one command, on a machine that has only Python 3.11+.

    python3 dev.py up      # install into .venv, then run the whole stack (taskctl up)
    python3 dev.py test    # install into .venv with the test tools, then lint, type-check and test

Both create ``.venv`` beside this file and install the project into it from
pyproject.toml, again only when pyproject.toml has changed. Nothing here needs
anything but the standard library, so it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def run(*command: str | Path) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], cwd=ROOT, check=True)


def install(extra: str | None) -> None:
    """Create .venv and install the project (editable) with an optional extra, if not done already."""
    if not (BIN / "python").exists():
        print(f"+ creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    spec = f".[{extra}]" if extra else "."
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + spec.encode()).hexdigest()
    stamp = VENV / f".installed-{extra or 'base'}"
    if not (stamp.exists() and stamp.read_text() == digest):
        run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", spec)
        stamp.write_text(digest)
    install_pth()


def install_pth() -> None:
    """Put taskctl_rq.pth into .venv's site-packages, as a wheel of taskctl does (see setup.py).

    An editable install carries only the packages; without this file the plain
    `rq worker` of .venv would be RQ's stock worker.
    """
    site_packages = subprocess.run(
        [str(BIN / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    source, target = ROOT / "taskctl_rq.pth", Path(site_packages) / "taskctl_rq.pth"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        target.write_bytes(source.read_bytes())


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036  (this file runs before anything checks the version)
        print(f"taskctl needs Python 3.11 or newer; this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if command == "up":
            install(None)
            os.chdir(ROOT)  # .env and var/ are the project's
            os.execv(BIN / "taskctl", [str(BIN / "taskctl"), "up", "--procfile", str(ROOT / "Procfile"), *rest])
        if command == "test":
            install("test")
            run(BIN / "ruff", "check", ".")
            run(BIN / "ruff", "format", "--check", ".")
            # mypy beside pytest, not before it: its quarter of a minute overlaps the suite's first tests.
            print(f"+ {BIN / 'mypy'} (beside pytest; its report follows the tests')", flush=True)
            types = subprocess.Popen([str(BIN / "mypy")], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
            try:
                run(BIN / "python", "-m", "pytest", *rest)
            finally:
                report, _ = types.communicate()
                print(report, end="", flush=True)
            return types.returncode

    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
