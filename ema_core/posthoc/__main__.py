"""The command line: ``python -m ema_core.posthoc DIRECTORY --sigma-rel 0.05 0.1 --out FILE``.

Reconstructs the post-hoc EMAs of the given sigma_rels at ``--at`` (default: the last snapshot
step) in one pass over the snapshots, with a progress line on stderr, and writes each one to a
safetensors file: ``--out`` itself for one sigma_rel, ``<stem>-<sigma_rel><suffix>`` beside it
for several (``ema.safetensors`` -> ``ema-0.05.safetensors``, ``ema-0.1.safetensors``); a
repeated ``--sigma-rel`` adds its targets. A file holds every tied name the snapshots record
(``out.weight = emb.weight``), so it loads strictly (names holding ``/`` or ``~`` are
written as the snapshots escape them, ``~1`` and ``~0``: load those through ``reconstruct(...,
like=model.state_dict())``, as a model with a module's ``_extra_state``, which no snapshot
holds). Every result is computed before the first file is written. ``--plot PNG`` draws the
profiles; a ``--plot`` that is an ``--out`` file is refused before anything is read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ema_core._atomic import atomic_path
from ema_core._safetensors import write
from ema_core.posthoc._listing import VERSION, SnapshotInfo, is_snapshot_name
from ema_core.posthoc._math import sigma_rel_to_gamma
from ema_core.posthoc._plot import plot_profiles
from ema_core.posthoc._reconstruct import aliases_of, plan, reconstruct, with_aliases
from ema_core.posthoc._snapshots import code_for

#: The ``format`` of a reconstruction file's metadata.
FORMAT = "ema-core.posthoc-reconstruction"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ema_core.posthoc",
        description="Reconstruct post-hoc EMAs (EDM2) from a directory of snapshots.",
    )
    parser.add_argument("directory", type=Path, help="the snapshots' directory")
    parser.add_argument(  # repeated, the flag adds its targets to the earlier ones
        "--sigma-rel", type=float, nargs="+", action="extend", required=True, metavar="S"
    )
    parser.add_argument("--at", type=int, default=None, help="a snapshot step (default: the last)")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG")
    return parser


def _progress(done: int, total: int, info: SnapshotInfo) -> None:
    end = "\n" if done == total else ""
    sys.stderr.write(
        f"\rsnapshot {done}/{total} (step {info.step}, sigma_rel {info.sigma_rel}){end}"
    )
    sys.stderr.flush()


def out_paths(out: Path, sigma_rels: Sequence[float]) -> list[Path]:
    """``out`` for one sigma_rel; ``<stem>-<sigma_rel><suffix>`` for each of several."""
    if len(sigma_rels) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{s!r}{out.suffix}") for s in sigma_rels]


def _write(path: Path, arrays: dict[str, np.ndarray], at: int, sigma_rel: float) -> None:
    names = list(arrays)
    specs = [(n, code_for(arrays[n].dtype.name), arrays[n].shape) for n in names]
    meta = {
        "format": FORMAT,
        "format_version": VERSION,
        "step": str(at),
        "sigma_rel": repr(sigma_rel),
        "gamma": repr(sigma_rel_to_gamma(sigma_rel)),
        "names": json.dumps(names),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "r+b") as file:
        write(file, specs, (arrays[n] for n in names), meta)


def _check_outputs(
    parser: argparse.ArgumentParser, outs: list[Path], plot: Path | None, directory: Path
) -> None:
    """Refuse (exit 2, before anything is read) an output that is a directory, one that would
    put a snapshot-named file among the snapshots, or a ``--plot`` that is an ``--out`` file
    (the one would overwrite the other)."""
    given = [("--out", p) for p in outs] + ([("--plot", plot)] if plot is not None else [])
    for flag, path in given:
        if _is_dir(parser, flag, path):
            parser.error(f"{flag} {path} is a directory; give a file name")
        if _lands_in(path, directory):
            parser.error(
                f"{flag} {path} would be a snapshot-named file in the snapshot directory "
                f"{directory} (phema-<step>-<sigma_rel>.safetensors), which a later listing "
                "would read as a snapshot; give another name or folder"
            )
    for path in outs:
        if plot is not None and _same_file(path, plot):
            parser.error(
                f"--plot {plot} is the file --out writes ({path}): the plot and the "
                "reconstruction would overwrite each other; give the plot another name"
            )


def _is_dir(parser: argparse.ArgumentParser, flag: str, path: Path) -> bool:
    """Whether ``path`` is a directory; a path the system cannot look up (a name too long)
    exits 2 with the system's reason."""
    try:
        return path.is_dir()
    except OSError as err:
        parser.error(f"{flag} {path}: {err.strerror or err}")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (the same path once links are resolved, or two
    links to one existing file)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing: the paths differ, so the files will
        return False


def _lands_in(out: Path, directory: Path) -> bool:
    """Whether writing ``out`` (or the file a link there points to) puts a file that
    ``list_snapshots`` reads as a snapshot into ``directory``."""
    for path in (out, Path(os.path.realpath(out))):
        if is_snapshot_name(path.name):
            try:
                if os.path.samefile(path.parent, directory):
                    return True
            except OSError:  # a folder that does not exist (yet) is not the snapshots'
                continue
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad arguments or snapshots, 1 when
    an output cannot be written or matplotlib is missing)."""
    parser = _parser()
    args = parser.parse_args(argv)
    sigma_rels = [float(s) for s in args.sigma_rel]
    # "." or "/" have no name to derive from
    if _is_dir(parser, "--out", args.out) or not args.out.name:
        parser.error(f"--out {args.out} is a directory; give a file name")
    outs = out_paths(args.out, sigma_rels)
    _check_outputs(parser, outs, args.plot, args.directory)
    try:
        infos, solution, at = plan(args.directory, sigma_rels, args.at)
        results = reconstruct(
            args.directory, sigma_rels, at=at, dtype=args.dtype, progress=_progress
        )
    except (ValueError, TypeError, OSError) as err:
        parser.error(str(err))
    if args.plot is not None:  # first: a missing matplotlib stops the run before any write
        try:
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            plot_profiles(args.plot, infos, solution.coefficients, at, sigma_rels)
        except ImportError as err:
            parser.exit(1, f"{parser.prog}: error: {err}\n")
        except OSError as err:
            parser.exit(1, f"{parser.prog}: error: cannot write {args.plot}: {err}\n")
        print(f"wrote {args.plot}")
    aliases = aliases_of(infos)  # tied names too, so that the file loads strictly
    for path, sigma in zip(outs, sigma_rels, strict=True):
        try:
            _write(path, with_aliases(results[sigma], aliases), at, sigma)
        except OSError as err:
            parser.exit(1, f"{parser.prog}: error: cannot write {path}: {err}\n")
        print(f"wrote {path} (sigma_rel {sigma}, step {at})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
