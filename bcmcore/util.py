"""Small shared helpers: atomic file writes, rank-aware printing."""

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from bcmcore.config import UserError

LOW_SPACE_BYTES = (
    64 << 20
)  # a write failure with less free space than this is reported as disk full


class DiskFull(UserError):
    """No space left while writing a file; the file under its final name is untouched."""


def free_bytes(path):
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full(path, error):
    """A DiskFull naming the file and the free space if `error` (a failed write) is one, else None.

    torch.save reports a full disk as a RuntimeError ("basic_ios::clear: iostream error", "file
    write failed") without errno or file name: a failed write with almost no space left counts."""
    free = free_bytes(Path(path).parent)
    no_space = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    if not no_space and not (isinstance(error, RuntimeError) and free is not None):
        return None
    if not no_space and free >= LOW_SPACE_BYTES:
        return None
    left = "unknown" if free is None else f"{free / 2**20:.1f} MiB"
    return DiskFull(
        f"{path}: disk full while writing ({left} free on {free_mount(path)}); free some space and "
        f"rerun: files already complete are intact"
    )


def free_mount(path):
    path = Path(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    A crash leaves only a `.tmp-*` file, never a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            full = disk_full(path, e)
            if full is None:
                raise
            raise full from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; final files get the usual permissions
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_tmp(directory, stem=""):
    """Delete the `.tmp-<stem>*` files that a killed writer left in `directory`. Call it only where
    no live process writes those names: under the run lock, or for this command's own outputs."""
    for p in Path(directory).glob(f".tmp-{stem}*"):
        p.unlink(missing_ok=True)


def atomic_torch_save(obj, path):
    """torch.save to a temp name, fsync, rename: a killed writer never leaves a truncated
    checkpoint."""
    import torch  # not at the top: `bcm launch` and the workflow import this module without torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def sha256_file(path, chunk=1 << 20):
    """Hex sha256 of a file, read in chunks (shard manifests, staged weight files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
