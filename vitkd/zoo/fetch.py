"""Verified downloads into the cache: the only way a zoo file reaches a final name.

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
  other: they leave one valid file;
* only ``http``, ``https`` and ``file`` URLs are followed; pickle files are refused by name, unread.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import Request, url2pathname, urlopen

from ..config import path_under
from .index import ZooEntry, ZooError, ZooIndex, check_file_name, check_url

__all__ = ["cache_home", "entry_folder", "fetch_entry", "fetch_file", "verify_file", "sha256_of", "cached_folder"]

CHUNK = 1 << 16
TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)


class _Transient(Exception):
    """A failure worth another try."""


def cache_home() -> Path:
    return Path(os.environ.get("VITKD_HOME") or Path.home() / ".cache" / "vitkd")


def entry_folder(name: str) -> Path:
    return path_under(cache_home() / "zoo", name, key="zoo")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, sha256: str, size: int) -> Optional[str]:
    """None when ``path`` has exactly this size and sha256, else what is wrong (one phrase)."""
    n = path.stat().st_size
    if n != size:
        return f"size {n} bytes, expected {size}"
    digest = sha256_of(path)
    if digest != sha256:
        return f"sha256 {digest[:12]}..., expected {sha256[:12]}..."
    return None


def _setting(value, env: str, default, cast):
    if value is not None:
        return cast(value)
    raw = os.environ.get(env)
    if raw in (None, ""):
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ZooError(f"{env}: expected a number, got {raw!r}") from None


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (flock: between processes and between threads, each opening the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        try:
            import fcntl
        except ImportError:   # pragma: no cover - Windows: no lock (one download at a time is the user's job)
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _progress_bar(total: int, initial: int, desc: str, enabled: Optional[bool]):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stderr, disable=(None if enabled is None else not enabled), leave=False)


def _copy_stream(src, part: Path, mode: str, offset: int, size: int, bar) -> None:
    """Append (``ab``) or write (``wb``) ``src`` into ``part``, never past ``size`` + 1 bytes; a cut stream is
    transient (what arrived stays in ``part`` for the next try to resume)."""
    written = offset
    with open(part, mode) as out:
        try:
            while True:
                block = src.read(min(CHUNK, size + 1 - written))
                if not block:
                    break
                out.write(block)
                written += len(block)
                bar.update(len(block))
                if written > size:
                    break
        except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError, OSError) as e:
            out.flush()
            os.fsync(out.fileno())
            raise _Transient(f"connection cut at {written} of {size} bytes ({type(e).__name__})") from None
        out.flush()
        os.fsync(out.fileno())
    if written < size:
        raise _Transient(f"connection closed at {written} of {size} bytes")


def _get_http(url: str, part: Path, size: int, timeout: float, bar) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        part.unlink()
        offset = 0
    if offset == size:
        return
    headers = {"User-Agent": "vitkd-zoo"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        if e.code == 416:   # our partial file does not fit the server's: start over
            part.unlink()
            raise _Transient("HTTP 416 (range not satisfiable): starting over") from None
        if e.code in TRANSIENT_HTTP:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise ZooError(f"zoo: {url}: HTTP {e.code} {e.reason}") from None
    except (URLError, ConnectionError, socket.timeout, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise _Transient(f"{reason}") from None
    with resp:
        if offset and resp.status == 206:
            got = resp.headers.get("Content-Range", "")
            if not got.startswith(f"bytes {offset}-"):
                part.unlink()
                raise _Transient(f"server answered range '{got}' for bytes={offset}-: starting over")
            mode = "ab"
        else:   # 200: the server ignored Range (or there was none): the whole file, from the start
            mode, offset = "wb", 0
            bar.reset(total=size)
        bar.n = offset
        _copy_stream(resp, part, mode, offset, size, bar)


def _get_file(url: str, part: Path, size: int, timeout: float, bar) -> None:
    src = Path(url2pathname(unquote(urlparse(url).path)))
    if not src.is_file():
        raise ZooError(f"zoo: {url}: file not found")
    with open(src, "rb") as f:
        _copy_stream(f, part, "wb", 0, size, bar)


_GETTERS = {"http": _get_http, "https": _get_http, "file": _get_file}


def fetch_file(url: str, dest: Path, sha256: str, size: int, force: bool = False, retries: Optional[int] = None,
               backoff: Optional[float] = None, timeout: Optional[float] = None, progress: Optional[bool] = None,
               log: Callable[[str], None] = lambda m: None) -> Path:
    """``dest`` holding exactly (``sha256``, ``size``) from ``url``: the cached file when it verifies, else
    downloaded (see the module docstring). The caller holds the folder's lock."""
    check_file_name(dest.name)
    check_url(url)
    retries = _setting(retries, "VITKD_ZOO_RETRIES", 3, int)
    backoff = _setting(backoff, "VITKD_ZOO_BACKOFF", 1.0, float)
    timeout = _setting(timeout, "VITKD_ZOO_TIMEOUT", 30.0, float)
    part = dest.with_name(f".{dest.name}.part")
    if dest.exists():
        problem = None if force else verify_file(dest, sha256, size)
        if not force and problem is None:
            return dest
        if problem:
            log(f"zoo: cached {dest} fails verification ({problem}): removed, downloading again")
        dest.unlink()
    getter = _GETTERS[urlparse(url).scheme.lower()]
    fresh_tries = 2 if part.exists() else 1   # a .part from before may not belong to this file: one clean retry
    for fresh in range(fresh_tries):
        with _progress_bar(size, 0, dest.name, progress) as bar:
            for attempt in range(retries + 1):
                try:
                    getter(url, part, size, timeout, bar)
                    break
                except _Transient as e:
                    if attempt == retries:
                        raise ZooError(f"zoo: cannot download {url}: {e} (after {retries + 1} tries)") from None
                    wait = backoff * (2 ** attempt)
                    log(f"zoo: {url}: {e}; retrying in {wait:.1f}s")
                    time.sleep(wait)
        problem = verify_file(part, sha256, size)
        if problem is None:
            os.replace(part, dest)
            return dest
        part.unlink()
        if fresh + 1 == fresh_tries:
            raise ZooError(f"zoo: {url} does not match the index ({problem}): refused, nothing kept")
        log(f"zoo: resumed {dest.name} does not verify ({problem}): downloading from the start")
    raise AssertionError("unreachable")   # pragma: no cover


def _remove_strangers(folder: Path, entry: ZooEntry) -> None:
    """Only the entry's verified files stay in its folder (timm's local-dir loader picks weights by name)."""
    keep = {f.name for f in entry.files} | {".lock"}
    for p in folder.iterdir():
        if p.name not in keep and not p.name.endswith(".part") and p.is_file():
            p.unlink()


def fetch_entry(index: ZooIndex, entry: ZooEntry, force: bool = False, retries: Optional[int] = None,
                backoff: Optional[float] = None, progress: Optional[bool] = None,
                log: Callable[[str], None] = lambda m: None) -> Path:
    """The entry's folder in the cache with every file verified (downloaded when missing or failing)."""
    folder = entry_folder(entry.name)
    urls = [(f, index.url_of(f)) for f in entry.files]   # bad URLs and a missing base fail before any work
    with _locked(folder):
        for f, url in urls:
            fetch_file(url, path_under(folder, f.name, key=f"zoo: {entry.name} file"), f.sha256, f.size, force=force, retries=retries, backoff=backoff,
                       progress=progress, log=log)
        _remove_strangers(folder, entry)
    return folder


def cached_folder(entry: ZooEntry) -> Path:
    """The entry's cached folder, every file re-verified; one line naming the first that fails (no download)."""
    folder = entry_folder(entry.name)
    with _locked(folder):
        for f in entry.files:
            p = path_under(folder, f.name, key=f"zoo: {entry.name} file")
            if not p.is_file():
                raise ZooError(f"zoo: {entry.name} is not downloaded ({p} missing): vitkd zoo download {entry.name}")
            problem = verify_file(p, f.sha256, f.size)
            if problem:
                p.unlink()
                raise ZooError(f"zoo: cached {p} fails verification ({problem}): removed; "
                               f"vitkd zoo download {entry.name}")
        _remove_strangers(folder, entry)
    return folder
