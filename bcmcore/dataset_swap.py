"""A shard folder is replaced as a whole (`bcm prep --out DIR`): the new shards are written to a
build folder beside DIR and swapped in only once complete, so a failed or interrupted prep leaves
the previous dataset byte-for-byte as it was.

Only files bcm wrote are ever removed: the manifest, the shards and indexes it lists, the caches
written beside them (demo-classifier.pt, fid-ref-*.npz) and atomic-write temporaries of those. Any
other entry in DIR stops the prep before it starts, named. Caches move to the new folder when the
new data's content digest equals the old one (they were computed from the same samples).

The swap is one rename where the kernel offers RENAME_EXCHANGE (Linux renameat2); elsewhere two
renames, with the old folder kept as `.<name>.old-*` until the new one is in place.
"""

import contextlib
import ctypes
import json
import os
import re
import socket
import tempfile
from pathlib import Path

from bcmcore.config import UserError

CACHE_RE = re.compile(r"^(demo-classifier\.pt|fid-ref-[A-Za-z0-9_.-]+\.npz)$")
MANIFEST = "manifest.json"
# The files a prep wrote, recorded beside the manifest: Snakemake deletes a job's declared output
# (manifest.json) before rerunning it, and the shards must still be known as ours.
RECORD = ".bcm-prep-files.json"


def _listed(manifest):
    """Shard and index names a manifest lists."""
    return {
        e[k]
        for s in (manifest.get("splits") or {}).values()
        for e in s.get("shards", [])
        for k in ("name", "index")
    }


def owned_entries(folder):
    """{name: is_cache} of a finished dataset folder's entries, all of them written by bcm; any
    other entry is a UserError naming it."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir()}
    ours = {MANIFEST, RECORD}
    for listing in (MANIFEST, RECORD):
        if listing not in names:
            continue
        try:
            d = json.loads((folder / listing).read_text())
            ours |= _listed(d) if listing == MANIFEST else set(d["files"])
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
            raise UserError(
                f"{folder / listing}: not readable ({e}); the folder's files cannot be told apart "
                f"from yours: move it away or give another --out"
            ) from None
    out = {}
    for name in sorted(names):
        base = re.sub(r"^\.tmp-(.*)\.[^.]+$", r"\1", name)  # bcmcore.util.atomic_path's names
        if base in ours or CACHE_RE.match(base):
            out[name] = bool(CACHE_RE.match(base)) and base == name
            continue
        why = "not written by bcm prep" if names & {MANIFEST, RECORD} else "no manifest.json"
        raise UserError(
            f"{folder / name}: unexpected in the dataset folder ({why}); bcm prep replaces the "
            f"folder as a whole and never deletes what it did not write: move it away"
        )
    return out


def _remove(folder, entries):
    for name in entries:
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # something appeared meanwhile: leave it (and the folder) alone
    if folder.exists():
        print(f"bcm prep: kept {folder} (it holds files bcm did not write)")


def _exchange(a, b):
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _stale_builds(target):
    """Build folders of earlier preps of `target` on this host whose process is gone."""
    prefix = f".{target.name}.prep-{socket.gethostname()}-"
    for p in target.parent.glob(f"{prefix}*"):
        pid = p.name[len(prefix) :].split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            yield p
        except PermissionError:
            pass


@contextlib.contextmanager
def replacing(out, digest_of):
    """Yield an empty build folder beside `out`; when the body completes, swap it in for `out`.

    digest_of(folder) -> content digest of a finished folder (caches carry over when equal). On any
    exception (Ctrl-C included) the build folder is removed and `out` is untouched.
    """
    target = Path(out)
    if target.is_symlink():
        target = target.resolve()  # a link to scratch storage: replace the real folder
    if target.exists() and not target.is_dir():
        raise UserError(f"{out}: --out must be a directory")
    if target.is_dir():
        owned_entries(target)  # unexpected files stop the prep before any work
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_builds(target):
        _remove(stale, [p.name for p in stale.iterdir() if not p.is_dir()])
    build = Path(
        tempfile.mkdtemp(
            prefix=f".{target.name}.prep-{socket.gethostname()}-{os.getpid()}-", dir=target.parent
        )
    )
    try:
        yield build
        files = sorted(p.name for p in build.iterdir())
        (build / RECORD).write_text(json.dumps({"files": files}, indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(build, 0o777 & ~umask)  # mkdtemp makes 0700
        old = owned_entries(target) if target.is_dir() else None  # checked again: a late arrival
        previous = digest_of(target) if old is not None else None
        if previous is not None and previous == digest_of(build):
            for name in [n for n, is_cache in old.items() if is_cache]:
                os.replace(target / name, build / name)
                del old[name]
    except BaseException:
        _remove(build, [p.name for p in build.iterdir()] if build.is_dir() else [])
        raise
    if old is None:
        os.rename(build, target)
    elif _exchange(build, target):
        _remove(build, old)  # build now holds the old dataset
    else:
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, aside)
        os.rename(build, target)
        _remove(aside, old)
