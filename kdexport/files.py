"""Atomic file writes: write a temp file beside the target, fsync, then rename over it; the cache folder, and the
one way a cache entry is written and trusted again (:func:`write_cache_entry`, :func:`trusted_cache_entry`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import KdexportError, OutputError, StateError, first_line


def cache_root() -> Path:
    """kdexport's cache folder: $KDEXPORT_CACHE_DIR, else $XDG_CACHE_HOME/kdexport (~/.cache/kdexport)."""
    env = os.environ.get("KDEXPORT_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdexport"


CACHE_PARTS = ("imagefolder", "teacher-logits", "baselines")  # kdexport cache's parts (``kdexport cache``)


def _cache_folder() -> Path:
    """The cache folder, or OutputError (exit 2) saying what is there instead of a folder."""
    root = cache_root()
    if root.exists() and not root.is_dir():
        raise OutputError(f"the cache path {str(root)!r} is not a folder (set KDEXPORT_CACHE_DIR to a folder, or "
                          "move that file away)")
    return root


def cache_usage() -> tuple[Path, dict[str, tuple[int, int]]]:
    """The cache folder and, per part (decoded images, teacher logits, baselines), its number of files and bytes."""
    root = _cache_folder()
    parts = {}
    for name in CACHE_PARTS:
        files = [p for p in (root / name).rglob("*") if p.is_file()] if (root / name).is_dir() else []
        parts[name] = (len(files), sum(p.stat().st_size for p in files))
    return root, parts


def cache_clear(part: str = "all") -> int:
    """Delete one part of the cache (or all of it); return the bytes freed."""
    root, usage = cache_usage()
    freed = 0
    for name in (CACHE_PARTS if part == "all" else (part,)):
        folder = root / name
        if folder.is_dir():
            try:
                shutil.rmtree(folder)
            except OSError as e:
                raise OutputError(f"cannot clear {str(folder)!r}: {e.strerror or e}") from None
            freed += usage[name][1]
    return freed


_UMASK = os.umask(0)  # read the process umask once (os.umask can only read it by setting it)
os.umask(_UMASK)


def hash_file(path: str | os.PathLike, h=None):
    """``h`` (default a new sha256) updated with the file's bytes, read in 1 MiB blocks."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def read_json(path: str | os.PathLike, what: str, remedy: str = "", *, expect: type = dict,
              error: type[KdexportError] = StateError) -> Any:
    """A JSON file kdexport reads back (or was given): its content, of type ``expect``, or one line naming
    the file, what is wrong with it and ``remedy`` (``error``, exit 2)."""
    then = f"; {remedy}" if remedy else ""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist{then}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise error(f"{what} {str(path)!r} is not readable JSON ({first_line(e, 80)}){then}") from None
    if not isinstance(value, expect):
        raise error(f"{what} {str(path)!r} holds a {type(value).__name__}, not a JSON "
                    f"{'object' if expect is dict else expect.__name__}{then}")
    return value


def write_failure(path: str | os.PathLike, e: BaseException) -> OutputError:
    """One line for a failed write: the path and the OS's reason. ``torch.save`` reports a full disk or a
    file-size limit as a RuntimeError without the reason, so the free space is looked up."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e, 120)
    if not isinstance(e, OSError):
        try:
            free = shutil.disk_usage(Path(path).parent).free
            reason += (" (no space left on device)" if free < (1 << 20) else
                       " (the disk has space: a file-size limit or an I/O error?)")
        except OSError:
            pass
    return OutputError(f"cannot write {str(path)!r}: {reason}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename tmp_path to ``path``. The target is never half-written; a
    failed write (full disk, file-size limit, permissions) raises OutputError naming the path."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, NotImplementedError):
            raise write_failure(path, e) from None
        raise
    return path


def optional_write(what: str, write: Callable[[], Any]) -> bool:
    """A write the run can do without (a cache): on failure, warn once and go on."""
    try:
        write()
        return True
    except OutputError as e:
        warnings.warn(f"{what} not saved, going on without it: {e}", RuntimeWarning, stacklevel=2)
        return False


def reserve(path: str | os.PathLike, start: int = 0) -> None:
    """Allocate the blocks of ``path`` from ``start`` to its end on disk now, so that a full disk or a file-size
    limit is an OSError here and not a SIGBUS later, while a memory map of the file is filled (a file extended by
    seek or truncate is sparse until its pages are written). ``posix_fallocate`` where the filesystem has it, else
    zeros written in 1 MiB blocks."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, start, max(size - start, 0))
            return
        except (AttributeError, OSError) as e:  # no fallocate here (macOS, some network filesystems)
            if isinstance(e, OSError) and e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        block = b"\0" * (1 << 20)
        os.lseek(fd, start, os.SEEK_SET)
        for offset in range(start, size, len(block)):
            os.write(fd, block[:min(len(block), size - offset)])
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def write_cache_entry(path: str | os.PathLike, write: Callable[[str], None], what: str) -> bool:
    """Write a cache entry atomically (``write(tmp_path)``), then its SHA-256 beside it (``NAME.sha256``), which
    :func:`trusted_cache_entry` checks before the entry is used again. A write that cannot happen (full disk,
    a file-size limit, permissions, the cache path a file) is a warning and False: the run goes on without it."""
    path = Path(path)

    def both() -> None:
        atomic_write(path, write)
        atomic_write_text(_seal_path(path), hash_file(path).hexdigest() + "\n")

    return optional_write(what, both)


def trusted_cache_entry(path: str | os.PathLike, what: str) -> Path | None:
    """``path`` when it is a cache entry whose bytes still match the digest written with it; None when there is
    none. An entry without its digest (cut off while written, or from an older kdexport) or with another one
    (changed since, damaged) is removed with a warning, so the caller recomputes it."""
    path = Path(path)
    if not path.is_file():
        return None
    seal = _seal_path(path)
    try:
        want = seal.read_text(encoding="ascii").strip()
        ok = hash_file(path).hexdigest() == want
    except (OSError, UnicodeDecodeError):
        ok = False
    if ok:
        return path
    warnings.warn(f"{what} entry {str(path)!r} is not used: its content does not match the digest written with "
                  "it (or it has none); recomputing it", RuntimeWarning, stacklevel=2)
    drop_cache_entry(path)
    return None


def drop_cache_entry(path: str | os.PathLike) -> None:
    """Remove a cache entry and its digest (whatever is left of them)."""
    path = Path(path)
    for p in (path, _seal_path(path)):
        with contextlib.suppress(OSError):
            p.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, w)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` (``.NAME.partial``) under which a file is written and checked;
    it becomes ``path`` only when the block succeeds, and is deleted when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise write_failure(path, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()
