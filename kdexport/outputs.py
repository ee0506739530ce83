"""Output folders: one writer at a time, built aside, moved into place whole.

- :func:`lock_output` holds an exclusive lock on an output folder (``.NAME.lock`` beside it, with the owner's
  PID) so two runs never write (or delete) the same output;
- :func:`prepare_out_dir` checks the folder can be made and gives the hidden staging folder (``.NAME.partial``)
  where the work happens; :func:`commit_out_dir` renames it into place, an older output kept aside until the
  new one is in.

Runs, sweeps and packages all write their folders this way (``kdexport.runs`` adds what a run records for
``--resume``).
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

from .errors import OutputError

_HELD: dict[str, int] = {}  # lock file -> its open descriptor, for the locks this process holds


def lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def lock_output(final: Path, shared: bool = False) -> None:
    """An exclusive lock on an output folder (``.NAME.lock`` beside it, holding the owner's PID), held until
    :func:`release_output` or the process ends. A folder another process holds is refused in one line
    naming it: two runs never write (or delete) the same output. Re-entrant within a process.

    ``shared``: the lock the shards of one sweep hold together (``--shard``); it excludes an exclusive holder
    (a run, a sweep without shards, ``--overwrite``) and is excluded by one, and the shards coordinate their
    units with :func:`claim`."""
    if sys.platform == "win32":  # no flock; the staging-folder checks still apply
        return
    import fcntl

    lock = lock_path(final)
    key = str(lock.absolute())
    if key in _HELD:
        return
    make_dir(final.parent, final, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise OutputError(f"cannot lock output folder {str(final)!r}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = os.read(fd, 64).decode(errors="replace").strip()
            finally:
                os.close(fd)
            holder = (f"pid {owner}" if owner else "shards of a sweep (--shard)") if not shared else \
                f"pid {owner or 'unknown'}, without --shard"
            raise OutputError(f"output folder {str(final)!r} is in use by another kdexport process ({holder}); "
                              "wait for it to finish or choose another --out") from None
        try:  # the holder before us may have removed the file between our open and flock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if not shared:  # shared holders leave the file alone: it names an exclusive owner only
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = fd


def release_output(final: Path) -> None:
    """Drop this process's lock on ``final`` (and its lock file, unless other shards still hold it)."""
    lock = lock_path(final)
    fd = _HELD.pop(str(lock.absolute()), None)
    if fd is None:
        return
    if sys.platform != "win32":
        import fcntl

        try:  # the last holder removes the file: it can take the lock exclusively
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return
    lock.unlink(missing_ok=True)
    os.close(fd)


def claim(path: Path, wait: bool = False) -> int | None:
    """An exclusive lock on ``path`` (created if missing) that the kernel drops when this process ends, even
    killed: a sweep unit, its teacher, its merge. Returns the descriptor to :func:`unclaim`, or None when
    another process holds it and ``wait`` is off. Lock files are left in place (removing one another process
    may be opening would let two hold "the same" lock); the caller checks, once it holds the lock, whether the
    work is still to do."""
    if sys.platform == "win32":
        return -1
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise OutputError(f"cannot create lock file {str(path)!r}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        if wait:
            raise
        return None
    return fd


def unclaim(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        os.close(fd)  # closing the descriptor drops its flock


def default_out_dir(prefix: str = "distill") -> Path:
    return Path("runs") / datetime.now().strftime(f"{prefix}-%Y%m%d-%H%M%S")


def staging_dir(final: Path) -> Path:
    return final.parent / f".{final.name}.partial"


def make_dir(path: Path, final: Path, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as e:
        raise OutputError(f"cannot write output folder {str(final)!r}: {e.strerror or e}") from None


def prepare_out_dir(out: str | os.PathLike | None, overwrite: bool, resume: bool = False) -> tuple[Path, Path]:
    """Check the output folder can be created; return (final, staging) paths.

    Work happens in the staging folder; with ``resume`` an interrupted run's staging folder is reused."""
    final = Path(out) if out else default_out_dir()
    if final.exists() and not final.is_dir():
        raise OutputError(f"output path {str(final)!r} exists and is not a folder")
    if final.exists() and not overwrite:
        raise OutputError(f"output folder {str(final)!r} exists; pass --overwrite to replace it")
    staging = staging_dir(final)
    if resume and not staging.is_dir():
        raise OutputError(f"nothing to resume: no interrupted run at {str(staging)!r}")
    lock_output(final)  # before touching the staging folder: it may be another live run's
    if staging.exists() and not resume:
        clear_hidden(staging, final, "an earlier run's unfinished folder")
    if final.exists():  # --overwrite: the new output is moved in by renaming the old one aside, at the end
        clear_hidden(old_dir(final), final, "the old output's place while it is replaced")
    make_dir(staging, final, exist_ok=resume)
    return final, staging


def old_dir(final: Path) -> Path:
    """Where ``--overwrite`` moves the old output while the new one goes into place."""
    return final.parent / f".{final.name}.old"


def clear_hidden(path: Path, final: Path, what: str) -> None:
    """Remove a hidden folder kdexport keeps beside ``final`` (``what`` says which), before a run starts; one line
    naming it when it cannot be removed, instead of a failure at the end of the run."""
    if not path.exists():
        return
    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except OSError as e:
        raise OutputError(f"cannot write {str(final)!r}: the hidden folder {str(path)!r} ({what}) is in the way and "
                          f"cannot be removed ({e.strerror or e}); remove it, then run again") from None


def commit_out_dir(staging: Path, final: Path) -> None:
    """Move a finished staging folder into place and release the output's lock. An older ``final`` is
    renamed aside first and deleted only once the new one is in place (put back if that fails)."""
    old = old_dir(final)
    try:
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        try:
            os.replace(staging, final)
        except OSError:
            if old.exists() and not final.exists():
                os.replace(old, final)
            raise
    except OSError as e:
        raise OutputError(f"cannot move the finished output into {str(final)!r}: {e.strerror or e}") from None
    shutil.rmtree(old, ignore_errors=True)
    release_output(final)
