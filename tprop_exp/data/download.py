"""Download a file from a list of mirrors, resumably, with a checksum check.

The file grows as `<dest>.part` and is moved into place with os.replace only
once its checksum is right, so `dest` is either absent or complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from tprop_exp import UserError, __version__

# Merity's WikiText mirror answers 403 to Python's default User-Agent.
USER_AGENT = f"tprop_exp/{__version__}"
TIMEOUT_S = 60
CHUNK = 1 << 20


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold filelock's exclusive lock on `path` for the `with` block.

    Parallel runs of a sweep then download (or tokenise) a dataset once while
    the others wait, instead of all writing the same partial file.  Where no
    lock file can be made (a read-only folder) it goes on unlocked: checked
    first, since a lock that cannot be created would otherwise be waited on.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        lock = FileLock(path)
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _digest_problem(path: Path, md5=None, sha1=None, sha256=None, size=None) -> str | None:
    """None if `path` has the given size and checksums, else what is wrong."""
    if size is not None and path.stat().st_size != size:
        return f"has {path.stat().st_size:,} bytes, expected {size:,}"
    wanted = {name: value.lower() for name, value in
              (("md5", md5), ("sha1", sha1), ("sha256", sha256)) if value}
    if not wanted:
        return None
    hashes = {name: hashlib.new(name) for name in wanted}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            for h in hashes.values():
                h.update(chunk)
    for name, h in hashes.items():
        if h.hexdigest() != wanted[name]:
            return f"has {name} {h.hexdigest()}, expected {wanted[name]}"
    return None


def verify(path: Path, *, md5=None, sha1=None, sha256=None, size=None) -> bool:
    """True if `path` exists and matches every checksum (and size) given."""
    path = Path(path)
    return path.is_file() and _digest_problem(path, md5, sha1, sha256, size) is None


def _get(url: str, part: Path, size: int | None) -> None:
    """Append the rest of `url` to `part`, resuming with an HTTP Range request."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return  # a previous run got every byte but stopped before the check
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part is whole
            return
        raise
    with resp:
        if have and resp.status != 206:
            have = 0  # the server ignored the Range header: start again
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length else size
        with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True,
                desc=part.name[:-len(".part")], disable=None, leave=False) as bar:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                f.write(chunk)
                bar.update(len(chunk))


def fetch(urls: list[str], dest: Path, *, md5=None, sha1=None, sha256=None,
          size=None) -> Path:
    """Make sure `dest` exists with the given checksums, downloading it if needed.

    Mirrors are tried in order; a network error moves on to the next one and
    keeps the partial file, which the next mirror (or the next run) resumes.
    A finished download with the wrong checksum is deleted and is an error.
    """
    dest = Path(dest)
    sums = dict(md5=md5, sha1=sha1, sha256=sha256, size=size)
    if not dest.exists():
        with file_lock(dest.with_suffix(dest.suffix + ".lock")):
            if not dest.exists():  # else another run fetched it while we waited
                _download(urls, dest, sums)  # checks the checksum before the move
                return dest
    problem = _digest_problem(dest, **sums)
    if problem:
        raise UserError(f"{dest} {problem}; delete it to download it again")
    return dest


def _download(urls: list[str], dest: Path, sums: dict) -> None:
    part = dest.with_suffix(dest.suffix + ".part")
    errors = []
    for url in urls:
        try:
            _get(url, part, sums["size"])
        except (OSError, ValueError, http.client.HTTPException) as e:  # no network, 404, cut off
            errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
            continue
        problem = _digest_problem(part, **sums)
        if problem:
            part.unlink()
            raise UserError(f"download of {dest.name} from {url} {problem}; "
                            "deleted the partial file, run again to retry")
        os.replace(part, dest)
        return
    if not urls:
        raise UserError(f"{dest.name} is missing and no mirror is configured; put it at {dest}")
    raise UserError(f"could not download {dest.name} ({errors[-1]}); download it from "
                    f"{' or '.join(urls)} and put it at {dest}")
