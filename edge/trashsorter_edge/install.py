"""The component's Install step (standard library only; the recipe runs it as the component's user,
``RequiresPrivilege: false``, never as root):

    python3 install.py WORK_DIR [--outputs ggipc,iot-data]

creates the isolated environment ``WORK_DIR/venv`` and pip-installs the pinned ``requirements*.txt`` next to
this file into it (nothing system-wide). Running it again is cheap: pinned requirements already satisfied are
not downloaded again.

``TRASHSORTER_EDGE_SHARED_SITE`` (set only by ``trashsorter edge run`` on a developer machine) adds that
site-packages directory to the new environment through a ``.pth`` file, so the pins it already satisfies
are not downloaded again; pip still checks every pin and installs what is missing or different.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRAS = {"ggipc": "requirements-greengrass.txt", "iot-data": "requirements-iot-data.txt"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install.py")
    parser.add_argument("work")
    parser.add_argument("--outputs", default="", help="comma-separated outputs whose SDK is installed too")
    args = parser.parse_args(argv)
    env_dir = Path(args.work) / "venv"
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    shared = os.environ.get("TRASHSORTER_EDGE_SHARED_SITE", "")
    if shared:
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        Path(site, "trashsorter-shared-site.pth").write_text(shared + "\n")
    requirements = [HERE / "requirements.txt"]
    for name in filter(None, (part.strip() for part in args.outputs.split(","))):
        if name in EXTRAS:
            requirements.append(HERE / EXTRAS[name])
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    for path in requirements:
        command += ["-r", str(path)]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
