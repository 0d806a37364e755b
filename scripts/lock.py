"""Write the test/CI lock: every package `make test` installs, at one version, with its sha256.

    python scripts/lock.py [OUTPUT]          (what `make lock` runs; OUTPUT: requirements-dev.lock)

pip resolves the ranges of pyproject.toml (the dev, bench and peers groups), torch pinned as in
the Makefile and JAX for the CPU, in a throw-away virtual environment with a recent pip: a dry run
that installs nothing and reports the file it would take for each package, with its hash. timm is
resolved apart and without its dependencies (it wants torchvision, which does not import beside
this torch; the tests load one file of it). The lock holds wheels for this Python and platform
only, which is what the dev and CI machines run; users' installs keep pyproject's ranges.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # keep equal to TORCH in the Makefile
WITH_DEPS = ["pip", "setuptools>=68", TORCH, "jax[cpu]", "-e", str(ROOT)]
WITH_DEPS += ["--group", "dev", "--group", "bench", "--group", "peers"]
NO_DEPS = ["timm"]


def resolve(pip: list[str], args: list[str], workdir: Path) -> list[dict[str, Any]]:
    """What ``pip install args`` would install into an empty environment (pip's report)."""
    report = workdir / "report.json"
    command = [*pip, "install", "--dry-run", "--ignore-installed", "-q", "--report", str(report)]
    subprocess.run([*command, *args], check=True, cwd=ROOT)
    items: list[dict[str, Any]] = json.loads(report.read_text())["install"]
    return [item for item in items if "dir_info" not in item["download_info"]]  # not ema-core


def sha256(item: dict[str, Any]) -> str:
    """The file's sha256: from the index when it gives one, else read from the local file."""
    info = item["download_info"]
    known = info.get("archive_info", {}).get("hashes", {}).get("sha256")
    if known:
        return str(known)
    url = urlparse(info["url"])
    if url.scheme != "file":
        raise SystemExit(f"no sha256 for {info['url']}: the index gave none")
    return hashlib.sha256(Path(unquote(url.path)).read_bytes()).hexdigest()


def entry(item: dict[str, Any]) -> tuple[str, str]:
    name, version = item["metadata"]["name"].lower(), item["metadata"]["version"]
    return name, f"{name}=={version} \\\n    --hash=sha256:{sha256(item)}"


def main(output: str = "requirements-dev.lock") -> None:
    with tempfile.TemporaryDirectory(prefix="ema-core-lock-") as tmp:
        work = Path(tmp)
        print("lock: a throw-away environment with a recent pip ...", flush=True)
        venv.create(work / "env", with_pip=True)
        pip = [str(work / "env" / "bin" / "python"), "-m", "pip"]
        subprocess.run([*pip, "install", "-q", "pip>=25.1"], check=True)
        print("lock: resolving pyproject.toml's groups, torch and jax ...", flush=True)
        entries = dict(entry(item) for item in resolve(pip, WITH_DEPS, work))
        print("lock: resolving timm without its dependencies ...", flush=True)
        entries.update(entry(item) for item in resolve(pip, ["--no-deps", *NO_DEPS], work))
    head = [
        "# The test/CI environment, exact versions and hashes: `make test` installs it with",
        "# `pip install --require-hashes --no-deps`. Written by `make lock` (scripts/lock.py); do",
        "# not edit by hand. Users' installs take the ranges in pyproject.toml instead.",
        f"# Python {platform.python_version()} on {sys.platform}-{platform.machine()}",
        "",
    ]
    text = "\n".join(head + [entries[name] for name in sorted(entries)]) + "\n"
    (ROOT / output).write_text(text)
    print(f"lock: wrote {len(entries)} packages to {output}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the test/CI lock file (make lock).")
    parser.add_argument("output", nargs="?", default="requirements-dev.lock", help="the file")
    main(parser.parse_args().output)
