"""Verified downloads into the cache: the only way a zoo file reaches a final name. The transfer itself (temp file,
Range resume, retries, redirects, deadline, size ceiling) is :func:`vitkd.download.fetch`, shared with the datasets;
this module adds the index's checks, the cache layout, the lock and the ``VITKD_ZOO_*`` settings.

Cache: ``$VITKD_HOME/zoo/<name>/`` (default ``~/.cache/vitkd``), one folder per entry in timm's Hugging Face
Hub layout, so ``timm.create_model("local-dir:<folder>")`` loads it.

For every file of an entry:

* a cached file is re-verified (size, then sha256) before use; a file that fails is removed, never used;
* a download goes to a temporary ``.<file>.part`` beside the final name; size and sha256 are checked, then it is
  renamed into place (atomic): the cache never holds an unverified file under a final name;
* a ``.part`` left by an interrupted download resumes with HTTP ``Range`` (a server answering 200 instead
  of 206 is read from the start);
* transient failures (connection refused or cut, time-outs, HTTP 408/425/429/5xx) are retried with exponential
  backoff: ``retries`` / ``VITKD_ZOO_RETRIES`` (default 3) tries more, ``backoff`` / ``VITKD_ZOO_BACKOFF``
  seconds (default 1.0) before the first retry, doubling;
* an exclusive lock on the entry's folder makes concurrent downloads (threads or processes) wait for each
  other: they leave one valid file; its lock file goes on release, with the folders made to hold it, so a
  refused download leaves the cache as it was; a cache that cannot be written (read-only mount, no permission)
  is used without a lock when every file verifies and nothing else is in the folder, else refused in one line;
* only ``http``, ``https`` and ``file`` URLs are followed, and a redirect only to ``http`` or ``https`` (each
  hop checked, never retried); pickle files are refused by name, unread;
* every download has an overall deadline, retries and backoff included: ``VITKD_ZOO_DEADLINE`` seconds
  (default 1800), so a server that drips bytes cannot hold it forever;
* a file, and an entry's files together, may not exceed ``VITKD_ZOO_MAX_BYTES`` (default 2 GiB), and reading
  stops as soon as a server sends more than the index declares;
* a download that fails for good (deadline, size, a disk that is full or read-only, a refused redirect, a file
  that does not verify) removes its ``.part``: only a cut connection leaves one, for the next try to resume.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, List, Optional

from ..config import path_under
from ..io import LockChanging, held_lock, sha256_file
from ..download import DownloadError, fetch, limits_from_env
from .index import ZooEntry, ZooError, ZooIndex, check_file_name, check_url

__all__ = ["cache_home", "entry_folder", "fetch_entry", "fetch_file", "verify_file", "cached_folder",
           "check_size", "check_architecture"]



class _CacheUnwritable(Exception):
    """The entry's cache folder or its lock file cannot be created (a read-only cache)."""


def cache_home() -> Path:
    home = Path(os.environ.get("VITKD_HOME") or Path.home() / ".cache" / "vitkd")
    if home.exists() and not home.is_dir():
        raise ZooError(f"zoo: the cache {home} (VITKD_HOME) is not a folder")
    return home


def entry_folder(name: str) -> Path:
    return path_under(cache_home() / "zoo", name, key="zoo")


def verify_file(path: Path, sha256: str, size: int) -> Optional[str]:
    """None when ``path`` has exactly this size and sha256, else what is wrong (one phrase)."""
    n = path.stat().st_size
    if n != size:
        return f"size {n} bytes, expected {size}"
    digest = sha256_file(path)
    if digest != sha256:
        return f"sha256 {digest[:12]}..., expected {sha256[:12]}..."
    return None


def zoo_limits(retries: Optional[int] = None, backoff: Optional[float] = None, timeout: Optional[float] = None,
               deadline: Optional[float] = None, max_bytes: Optional[int] = None):
    """The download limits: arguments, else ``VITKD_ZOO_RETRIES``, ``VITKD_ZOO_BACKOFF``, ``VITKD_ZOO_TIMEOUT``,
    ``VITKD_ZOO_DEADLINE``, ``VITKD_ZOO_MAX_BYTES``, else the defaults (3, 1 s, 30 s, 1800 s, 2 GiB)."""
    try:
        return limits_from_env("VITKD_ZOO", deadline=deadline, max_bytes=max_bytes, retries=retries,
                               backoff=backoff, timeout=timeout)
    except DownloadError as e:
        raise ZooError(str(e)) from None


def check_size(size: int, what: str, max_bytes: Optional[int] = None) -> int:
    """``size`` bytes (a file, or an entry's files together) under the download ceiling, else one line."""
    ceiling = zoo_limits(max_bytes=max_bytes).max_bytes
    if size > ceiling:
        raise ZooError(f"zoo: {what}: {size} bytes exceed the download ceiling of {ceiling} bytes "
                       f"(VITKD_ZOO_MAX_BYTES): refused, nothing downloaded")
    return size


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (flock on its ``.lock``: between processes and between threads, each
    opening the file); a second holder waits. On release the lock file goes again, and so do the folders made to
    hold it when they are left empty: a download that fails leaves the cache as it was (the next holder, finding
    the file it waited on removed, takes the lock anew, as :func:`vitkd.rundir.exclusive` does).
    :class:`_CacheUnwritable` when the folder or its lock file cannot be created."""
    held = contextlib.ExitStack()
    try:   # only taking the lock is worded here: errors of the block itself pass through
        held.enter_context(held_lock(folder / ".lock", wait=True))
    except LockChanging as e:
        raise ZooError(f"zoo: {e}") from None
    except OSError as e:
        raise _CacheUnwritable(e.strerror or str(e)) from None
    with held:
        yield


def fetch_file(url: str, dest: Path, sha256: str, size: int, force: bool = False, retries: Optional[int] = None,
               backoff: Optional[float] = None, timeout: Optional[float] = None, progress: Optional[bool] = None,
               log: Callable[[str], None] = lambda m: None, deadline: Optional[float] = None,
               max_bytes: Optional[int] = None) -> Path:
    """``dest`` holding exactly (``sha256``, ``size``) from ``url``: the cached file when it verifies, else
    downloaded through :func:`vitkd.download.fetch` (see the module docstring). The caller holds the folder's
    lock."""
    check_file_name(dest.name)
    check_url(url)
    check_size(size, dest.name, max_bytes)
    limits = zoo_limits(retries, backoff, timeout, deadline, max_bytes)
    if dest.exists():
        problem = None if force else verify_file(dest, sha256, size)
        if not force and problem is None:
            return dest
        if problem:
            log(f"zoo: cached {dest} fails verification ({problem}): removed, downloading again")
        dest.unlink()
    try:
        return fetch(url, dest, lambda part: verify_file(part, sha256, size), size=size, limits=limits,
                     progress=progress, log=lambda m: log(f"zoo: {m}"), mismatch="does not match the index")
    except DownloadError as e:
        raise ZooError(f"zoo: {e}") from None


def _strangers(folder: Path, entry: ZooEntry) -> List[Path]:
    """Files in an entry's folder that are not the entry's (its lock and ``.part`` files aside): timm's
    local-dir loader picks weights by name, so none may stay beside a model that is used."""
    keep = {f.name for f in entry.files} | {".lock"}
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name not in keep and not p.name.endswith(".part") and p.is_file())


def check_architecture(folder: Path, entry: ZooEntry) -> None:
    """The entry's ``config.json`` (timm's, when the entry ships one) names the index's architecture."""
    if "config.json" not in {f.name for f in entry.files}:
        return
    path = folder / "config.json"
    try:
        got = json.loads(path.read_text()).get("architecture")
    except (OSError, ValueError, AttributeError) as e:
        raise ZooError(f"zoo: {path}: not a timm config ({type(e).__name__})") from None
    if got != entry.architecture:
        raise ZooError(f"zoo: entry {entry.name}: architecture '{entry.architecture}' in the index, {got!r} in its "
                       f"config.json: refused")


def _config_first(entry: ZooEntry):
    """The entry's files with config.json first: its architecture is checked before the weights come."""
    return sorted(entry.files, key=lambda f: f.name != "config.json")


def fetch_entry(index: ZooIndex, entry: ZooEntry, force: bool = False, retries: Optional[int] = None,
                backoff: Optional[float] = None, progress: Optional[bool] = None,
                log: Callable[[str], None] = lambda m: None) -> Path:
    """The entry's folder in the cache with every file verified (downloaded when missing or failing)."""
    folder = entry_folder(entry.name)
    check_size(entry.total_size(), f"entry {entry.name}")
    urls = [(f, index.url_of(f)) for f in _config_first(entry)]   # bad URLs and a missing base fail before any work
    try:
        with _locked(folder):
            for f, url in urls:
                fetch_file(url, path_under(folder, f.name, key=f"zoo: {entry.name} file"), f.sha256, f.size,
                           force=force, retries=retries, backoff=backoff, progress=progress, log=log)
                if f.name == "config.json":
                    _check_or_remove(folder, entry)
            for p in _strangers(folder, entry):
                p.unlink()
    except _CacheUnwritable as e:
        return _read_only_folder(folder, entry, str(e))
    return folder


def _check_or_remove(folder: Path, entry: ZooEntry) -> None:
    """:func:`check_architecture`, the config.json removed when it fails (nothing of the entry is kept)."""
    try:
        check_architecture(folder, entry)
    except ZooError:
        (folder / "config.json").unlink()
        raise


def cached_folder(entry: ZooEntry) -> Path:
    """The entry's cached folder, every file re-verified; one line naming the first that fails (no download)."""
    folder = entry_folder(entry.name)
    try:
        with _locked(folder):
            for f in entry.files:
                p = path_under(folder, f.name, key=f"zoo: {entry.name} file")
                if not p.is_file():
                    raise ZooError(f"zoo: {entry.name} is not downloaded ({p} missing): vitkd zoo download "
                                   f"{entry.name}")
                problem = verify_file(p, f.sha256, f.size)
                if problem:
                    p.unlink()
                    raise ZooError(f"zoo: cached {p} fails verification ({problem}): removed; "
                                   f"vitkd zoo download {entry.name}")
            _check_or_remove(folder, entry)
            for p in _strangers(folder, entry):
                p.unlink()
    except _CacheUnwritable as e:
        return _read_only_folder(folder, entry, str(e))
    return folder


def _read_only_folder(folder: Path, entry: ZooEntry, reason: str) -> Path:
    """A cache folder this process cannot write (a read-only mount, a shared cache without write permission),
    used without a lock: every file must verify and nothing else may be there (nothing is removed or
    downloaded; what fails is named in one line)."""
    advice = "set VITKD_HOME to a folder you can write"
    for f in entry.files:
        p = folder / f.name
        problem = "missing" if not p.is_file() else verify_file(p, f.sha256, f.size)
        if problem:
            raise ZooError(f"zoo: cache {folder} cannot be written ({reason}) and its {f.name} is not usable "
                           f"({problem}): {advice}")
    strangers = _strangers(folder, entry)
    if strangers:
        raise ZooError(f"zoo: cache {folder} cannot be written ({reason}) and holds {strangers[0].name}, which is "
                       f"not a file of {entry.name}: {advice}")
    check_architecture(folder, entry)
    return folder
