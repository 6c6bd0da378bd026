"""The component's Install step (standard library only; the recipe runs it as the component's user,
``RequiresPrivilege: false``, never as root):

    python3 install.py WORK_DIR [--outputs ggipc,iot-data]

creates the isolated environment ``WORK_DIR/venv`` and pip-installs the pinned ``requirements*.txt`` next to
this file into it (nothing system-wide). Running it again is cheap: pinned requirements already satisfied are
not downloaded again.

It then checks that this user can open the camera the component is configured for (read and write, as
V4L2 needs) and says exactly what to add when it cannot: ``sudo usermod -aG video ggc_user`` (the device's
group), or that the device is not there. ``TRASHSORTER_EDGE_SOURCE`` (the component's ``Source``, set by the
launcher's Install step from the configuration; an environment variable, never shell text) names it:
``0``/``/dev/video0`` that device, ``picamera2`` every ``/dev/video*`` and ``/dev/media*`` (libcamera opens
both), a GStreamer pipeline the devices it names (else every ``/dev/video*``), a stream, file or folder none;
unset, every ``/dev/video*``. A problem is a warning, not a failure: the camera may be plugged in later.

``TRASHSORTER_EDGE_SHARED_SITE`` (set only by ``trashsorter edge run`` on a developer machine) adds that
site-packages directory to the new environment through a ``.pth`` file, so the pins it already satisfies
are not downloaded again; pip still checks every pin and installs what is missing or different.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import stat
import subprocess
import sys
import venv
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRAS = {"ggipc": "requirements-greengrass.txt"}
SOURCE_ENV = "TRASHSORTER_EDGE_SOURCE"


def camera_kind(spec: str) -> str:
    """``v4l2`` (``0``, ``/dev/video0``), ``picamera2`` (``picamera2``, ``picamera2:1``), ``gstreamer`` (a
    pipeline: ``gst:...`` or anything with `` ! ``), ``stream`` (``rtsp://``, ``http://``...) or ``file``.
    (Defined here, standard library only, because the Install step runs it before the venv exists.)"""
    if spec.isdigit() or spec.startswith("/dev/video"):
        return "v4l2"
    if spec == "picamera2" or spec.startswith("picamera2:"):
        return "picamera2"
    if spec.startswith("gst:") or " ! " in spec:
        return "gstreamer"
    return "stream" if "://" in spec else "file"


def camera_devices(source: str, dev: Path = Path("/dev")) -> list[Path]:
    """The device files the source ``source`` opens (see the module docstring); ``""``: every camera."""
    spec = source.strip()
    every = sorted(dev.glob("video*"))
    kind = camera_kind(spec) if spec else ""
    if kind == "v4l2":
        return [dev / f"video{spec}"] if spec.isdigit() else [Path(spec)]
    if kind == "picamera2":
        return every + sorted(dev.glob("media*"))
    if kind == "gstreamer":
        named = dict.fromkeys(re.findall(r"/dev/(?:video|media)\d+", spec))
        return [Path(name) for name in named] or every
    return every if not kind else []


def can_open(mode: int, owner: int, group: int, uid: int, gids: Iterable[int]) -> bool:
    """Read AND write permission for ``uid`` (in groups ``gids``) on a file with ``mode``/owner/group."""
    if uid == 0:
        return True
    if uid == owner:
        need = stat.S_IRUSR | stat.S_IWUSR
    elif group in set(gids):
        need = stat.S_IRGRP | stat.S_IWGRP
    else:
        need = stat.S_IROTH | stat.S_IWOTH
    return mode & need == need


def camera_access(
    devices: Iterable[Path] | None = None, uid: int | None = None, gids: Iterable[int] | None = None
) -> str | None:
    """None when this user can open every camera device in ``devices`` (default: every ``/dev/video*``; none
    is fine); else what is wrong: a device that is not there, or what to add to open it."""
    uid = os.getuid() if uid is None else uid
    gids = list(os.getgroups() if gids is None else gids)
    found = sorted(Path("/dev").glob("video*")) if devices is None else list(devices)
    missing = [device for device in found if not device.exists()]
    blocked = []
    for device in found:
        if device in missing:
            continue
        info = device.stat()
        if not can_open(info.st_mode, info.st_uid, info.st_gid, uid, gids):
            blocked.append((device, info.st_gid))
    where = ", ".join(map(str, missing))
    absent = f"no camera at {where} (is it connected? the app retries until it opens)" if missing else None
    if not blocked:
        return absent
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(blocked[0][1]).gr_name
    except KeyError:
        group = str(blocked[0][1])
    names = ", ".join(str(device) for device, _ in blocked)
    advice = (
        f"user {user} cannot open the camera ({names}): add it to the '{group}' group - "
        f"sudo usermod -aG {group} {user} - then restart the Greengrass nucleus (sudo systemctl restart "
        "greengrass) so the component runs with the new group"
    )
    return f"{absent}; {advice}" if absent else advice


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
    code = subprocess.run(command, check=False).returncode
    advice = camera_access(camera_devices(os.environ.get(SOURCE_ENV, "")))
    if advice:
        print(f"trashsorter-edge install: WARNING: {advice}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
