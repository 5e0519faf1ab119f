"""Peers' own test suites, from their source distributions.

`suite("django")` is the unpacked sdist of the Django installed in this environment (same
version), fetched with `pip download --no-binary :all:` into `.peer-suites/` (kept between
runs, ignored by git) the first time a test asks for it.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / ".peer-suites"


def suite(dist: str) -> Path:
    """The unpacked source distribution of the installed `dist` (e.g. "django", "flask")."""
    version = importlib.metadata.version(dist)
    name = importlib.metadata.metadata(dist)["Name"].lower().replace("-", "_")
    unpacked = ROOT / f"{name}-{version}"
    if unpacked.is_dir():
        return unpacked
    ROOT.mkdir(exist_ok=True)
    archive = _download(dist, version)
    with tarfile.open(archive) as tar:
        tar.extractall(ROOT, filter="data")
    found = ROOT / archive.name.removesuffix(".tar.gz")
    if found != unpacked:
        found.rename(unpacked)
    return unpacked


def _download(dist: str, version: str) -> Path:
    downloads = ROOT / "downloads"
    downloads.mkdir(exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(downloads),
            f"{dist}=={version}",
        ],
        check=True,
    )
    wanted = {f"{dist.lower().replace('-', '_')}-{version}.tar.gz", f"{dist}-{version}.tar.gz"}
    for path in downloads.iterdir():
        if path.name.lower() in {w.lower() for w in wanted}:
            return path
    raise RuntimeError(f"pip download {dist}=={version} left no sdist in {downloads}")
