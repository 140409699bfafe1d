"""File helpers shared by the stages: JSONL and JSON written atomically, so a crash leaves the old
file or the new one, never half of one."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


class DiskFull(Exception):
    """The disk filled up while a file was written; the old file (if any) is untouched."""


@contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """Yield a temp path beside dst; it replaces dst only if the block finishes. A full disk is
    DiskFull, one line naming the file: the temp file goes, the old dst stays."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dst)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"{dst}: no space left on device while writing it; free space and run again "
                           "(nothing half-written was kept)") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_jsonl(dst: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with atomic_path(dst) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(src: str | Path) -> list[dict[str, Any]]:
    with open(src, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_json(dst: str | Path, obj: Any) -> None:
    with atomic_path(dst) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(src: str | Path) -> Any:
    return json.loads(Path(src).read_text(encoding="utf-8"))


def file_sha256(path: str | Path) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
