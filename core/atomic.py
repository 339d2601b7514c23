"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename.

A reader, or a job restarted after a crash or ``kill -9``, never sees a half-written file under its
final name: the final name either does not exist or holds the complete file. Leftover temporary
files start with ``.rsgen-tmp-`` and can be removed with :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".rsgen-tmp-"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; finished files get the usual 0666 & ~umask, like open() would give.
FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is renamed onto ``final``.

    If the body raises, the temporary file is deleted and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, final)
        if fsync:
            _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` (a model bundle, a
    checkpoint). If the body raises, the temporary folder is deleted and ``final`` is left untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=final.parent))
    try:
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_bytes(final: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    with atomic_path(final, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"), fsync=fsync)


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files a killed writer left in ``folder`` and its sub-folders; returns how many."""
    removed = 0
    for path in sorted(Path(folder).rglob(f"{TMP_PREFIX}*"), reverse=True):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform/filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
