"""The trainer's source as a deterministic, content-addressed ``sourcedir.tar.gz`` (stdlib only).

Members: every ``*.py`` of this package under ``trashsorter_trainer/``, THE preprocessing it imports
(``trashsorter_edge/__init__.py``, ``contract.py`` (the exchanged formats), ``preprocessing.py`` and
the bounded decode it calls, ``decoding.py``
and ``imagefile.py``: one definition shared with the device and the edge app, Pillow + numpy only),
``train.py`` (a copy of ``__main__.py``: the ``sagemaker_program``) and ``requirements.txt`` at the root.
Sorted names, zero
timestamps/owners and fixed modes make the bytes depend on the source alone, so the SHA-256 names the code
a job ran (lineage) and the object is uploaded only when it is not in the bucket yet.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trashsorter_trainer.contract import PROGRAM, REQUIREMENTS

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
SOURCE_PREFIX = "trainer-source/"
SHARED_MODULES = (
    "trashsorter_edge",
    ("__init__.py", "contract.py", "decoding.py", "imagefile.py", "preprocessing.py"),
)


class SourceUnavailable(RuntimeError):
    """A module the trainer needs is not installed beside it (the sourcedir would not run)."""


@dataclass(frozen=True)
class SourceDir:
    data: bytes
    sha256: str

    def key(self, prefix: str = SOURCE_PREFIX) -> str:
        return f"{prefix}{self.sha256}/sourcedir.tar.gz"


def shared_dir() -> Path:
    """Where the shared preprocessing package is installed (found without importing it)."""
    package, _ = SHARED_MODULES
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailable(f"{package} (THE preprocessing) is not installed beside the trainer")
    return Path(next(iter(spec.submodule_search_locations)))


def members(package_dir: Path = PACKAGE_DIR) -> dict[str, bytes]:
    files = {f"{PACKAGE}/{p.name}": p.read_bytes() for p in sorted(package_dir.glob("*.py"))}
    package, modules = SHARED_MODULES
    shared = shared_dir()
    for name in modules:
        files[f"{package}/{name}"] = (shared / name).read_bytes()
    files[PROGRAM] = (package_dir / "__main__.py").read_bytes()
    files[REQUIREMENTS] = (package_dir / REQUIREMENTS).read_bytes()
    return files


def build(package_dir: Path = PACKAGE_DIR) -> SourceDir:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(members(package_dir).items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    data = gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)
    return SourceDir(data=data, sha256=hashlib.sha256(data).hexdigest())


def ensure_uploaded(s3: Any, bucket: str, source: SourceDir | None = None) -> tuple[str, str]:
    """Put ``sourcedir.tar.gz`` under its hash unless it is there; returns (s3 uri, sha256)."""
    source = source or build()
    key = source.key()
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore ClientError; stdlib-only module: checked by the status code
        status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status != 404:
            raise
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=source.data,
            ContentType="application/gzip",
            Metadata={"sha256": source.sha256},
        )
    return f"s3://{bucket}/{key}", source.sha256
