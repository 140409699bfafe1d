"""Data versioning through DVC: reproduce the data stages of dvc.yaml and read the content
hashes DVC recorded for the splits, so every MLflow run names the exact data it saw.

    python -m tasks.data.versioning [WORKSPACE]   # same as `dvc repro`, then prints the split hashes
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tasks.data.split import HOLDOUT, TRAIN
from tasks.orchestration import stage_task


class StageFailed(RuntimeError):
    """A DVC data stage failed; one line naming the stage."""


@dataclass(frozen=True)
class DataVersion:
    hashes: dict[str, str]  # workspace-relative path -> DVC md5
    reproduced: list[str]  # stages DVC found stale before the run (empty when everything was up to date)


def _stale_stages(root: Path) -> list[str]:
    """Stages DVC's own status says must run (changed deps, params or outs)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return list(repo.status())


def _out_hashes(root: Path) -> dict[str, str]:
    """workspace-relative path -> the md5 DVC recorded for every stage output."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {str(out.def_path): out.hash_info.value for stage in repo.index.stages for out in stage.outs
                if out.hash_info and out.hash_info.value}


def _run_streaming(cmd: list[str], cwd: Path, env: dict) -> tuple[int, str, str]:
    """Run cmd, passing its stderr (progress bars, stage errors) through live while keeping a copy."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()
    while chunk := proc.stderr.read1(4096):
        err += chunk
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
    out = proc.stdout.read().decode(errors="replace")
    return proc.wait(), out, err.decode(errors="replace")


def reproduce(root: str | Path) -> DataVersion:
    """`dvc repro` in root, run by this interpreter so stage commands (`python -m tasks...`) find
    the same environment. It runs as a child process rather than through the API so that a failing
    stage's own one-line reason (`loragate: ...` on its stderr) can become the error; what ran and
    the output hashes come from DVC's Python API."""
    root = Path(root).resolve()
    stale = _stale_stages(root)
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    code, _, err = _run_streaming([sys.executable, "-m", "dvc", "repro"], root, env)
    if code != 0:
        reasons = re.findall(r"^loragate: (.+)$", err, re.M) or re.findall(r"^ERROR: (.+)$", err, re.M)
        raise StageFailed(reasons[-1] if reasons else f"dvc repro failed in {root}")
    hashes = _out_hashes(root)
    missing = [str(p) for p in (TRAIN, HOLDOUT) if str(p) not in hashes]
    if missing:
        raise StageFailed(f"{root / 'dvc.lock'}: no hash recorded for {', '.join(missing)}")
    return DataVersion(hashes, stale)

def current_hashes(root: str | Path) -> dict[str, str] | None:
    """The output hashes when DVC finds every stage up to date (a run would reproduce nothing), else None."""
    root = Path(root).resolve()
    return None if not (root / "dvc.lock").exists() or _stale_stages(root) else _out_hashes(root)


reproduce_task = stage_task(reproduce, "dvc-repro")


if __name__ == "__main__":
    print(json.dumps(reproduce(sys.argv[1] if len(sys.argv) > 1 else ".").__dict__, indent=2))
