"""Verified downloads: the one way a fetched file (a zoo model's, a dataset's) reaches its final name.

:func:`fetch` gets ``url`` into ``dest``:

* the download goes to a temporary ``.<name>.part`` beside ``dest``; the caller's ``verify`` checks it, then it is
  renamed into place (atomic): nothing unverified ever holds a final name;
* with a known ``size``, a ``.part`` left by an interrupted download resumes with HTTP ``Range`` (a server answering
  200 instead of 206 is read from the start), and a server that announces or sends more is refused at once;
  without one, every try starts from the beginning and ``max_bytes`` bounds what is read;
* transient failures (connection refused or cut, time-outs, HTTP 408/425/429/5xx) are retried with exponential
  backoff (``retries`` tries more, ``backoff`` seconds before the first retry, doubling);
* only ``http``, ``https`` and ``file`` URLs are fetched, and a redirect is followed only to ``http`` or ``https``
  (each hop checked, never retried);
* the whole download, retries and waits included, has a deadline: a server that drips bytes cannot hold it;
* a download that fails for good (deadline, size, a full or read-only disk, a refused redirect, a file that does not
  verify) removes its ``.part``: only a cut connection leaves one, for the next try to resume.

Errors are :class:`DownloadError`, one line naming the URL (callers add their own prefix).
"""
from __future__ import annotations

import contextlib
import http.client
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import HTTPRedirectHandler, Request, build_opener, url2pathname

from .config import ConfigError

__all__ = ["DownloadError", "Limits", "limits_from_env", "ALLOWED_SCHEMES", "REDIRECT_SCHEMES", "check_url", "fetch"]

CHUNK = 1 << 16
TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)
ALLOWED_SCHEMES = ("http", "https", "file")
REDIRECT_SCHEMES = ("http", "https")


class DownloadError(ConfigError):
    """A download that failed for good: one line, exit 2."""


class _Transient(Exception):
    """A failure worth another try."""


@dataclass(frozen=True)
class Limits:
    """How long and how much one download may take, and how it retries. ``*_key`` names the setting a user
    changes (an environment variable) in the messages that quote the limit."""
    deadline_s: float = 1800.0
    max_bytes: int = 2 << 30
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    deadline_key: str = "deadline"
    max_bytes_key: str = "size ceiling"


def _env_number(key: str, default, cast, positive: bool = False, value=None):
    """``value`` when given, else the environment variable ``key`` (else ``default``), as ``cast``; one line when
    it is not a number (or not > 0 when ``positive``)."""
    if value is None:
        raw = os.environ.get(key)
        if raw in (None, ""):
            return default
        try:
            value = cast(raw)
        except ValueError:
            raise DownloadError(f"{key}: expected a number, got {raw!r}") from None
    value = cast(value)
    if positive and not value > 0:
        raise DownloadError(f"{key}: must be > 0, got {value}")
    return value


def limits_from_env(prefix: str, deadline=None, max_bytes=None, retries=None, backoff=None, timeout=None,
                    defaults: Limits = Limits()) -> Limits:
    """:class:`Limits` from arguments, else the environment (``<prefix>_DEADLINE`` seconds, ``<prefix>_MAX_BYTES``,
    ``<prefix>_RETRIES``, ``<prefix>_BACKOFF`` seconds, ``<prefix>_TIMEOUT`` seconds per read), else ``defaults``."""
    return Limits(
        deadline_s=_env_number(f"{prefix}_DEADLINE", defaults.deadline_s, float, True, deadline),
        max_bytes=_env_number(f"{prefix}_MAX_BYTES", defaults.max_bytes, int, True, max_bytes),
        retries=_env_number(f"{prefix}_RETRIES", defaults.retries, int, False, retries),
        backoff_s=_env_number(f"{prefix}_BACKOFF", defaults.backoff_s, float, False, backoff),
        timeout_s=_env_number(f"{prefix}_TIMEOUT", defaults.timeout_s, float, False, timeout),
        deadline_key=f"{prefix}_DEADLINE", max_bytes_key=f"{prefix}_MAX_BYTES")


def check_url(url: str, source: str = "") -> str:
    """A URL vitkd may fetch: an allowed scheme, and for http(s) a host and a numeric port (``source`` names where
    it came from, e.g. an environment variable)."""
    where = f"{source}: " if source else ""
    try:
        parts = urlparse(url)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https") and not parts.hostname:
            raise ValueError("no host")
        parts.port   # noqa: B018 - a non-numeric or out-of-range port raises here
    except ValueError as e:
        raise DownloadError(f"{where}malformed URL {url!r} ({e})") from None
    if scheme not in ALLOWED_SCHEMES:
        raise DownloadError(f"{where}URL scheme '{scheme or '(none)'}' not allowed in {url} "
                            f"(allowed: {', '.join(ALLOWED_SCHEMES)})")
    return url


class _Clock:
    """The time one download (every try and wait included) may take."""

    def __init__(self, url: str, limits: Limits):
        self.url, self.limits = url, limits
        self.ends = time.monotonic() + limits.deadline_s

    def left(self) -> float:
        return self.ends - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise DownloadError(f"{self.url}: not complete within the download deadline of "
                                f"{self.limits.deadline_s:g}s ({self.limits.deadline_key}): nothing kept")


class _CheckedRedirects(HTTPRedirectHandler):
    """Every hop of a redirect is checked before it is followed: http and https only (a server cannot send the
    download to ``ftp:``, ``file:`` or anywhere else); a refusal is final, never retried."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urlparse(newurl).scheme.lower()
        if scheme not in REDIRECT_SCHEMES:
            fp.close()
            raise DownloadError(f"{req.full_url}: redirected to {newurl}: scheme '{scheme or '(none)'}' not "
                                f"allowed (a redirect may lead to {' or '.join(REDIRECT_SCHEMES)} only)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = build_opener(_CheckedRedirects())


def _progress_bar(total: Optional[int], desc: str, enabled: Optional[bool]):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr,
                disable=(None if enabled is None else not enabled), leave=False)


def _copy_stream(src, part: Path, mode: str, offset: int, size: Optional[int], bar, clock: _Clock) -> None:
    """Append (``ab``) or write (``wb``) ``src`` into ``part``. A cut stream is transient (what arrived stays in
    ``part`` for the next try to resume); more bytes than ``size`` (or the ceiling), the deadline, or a disk that
    cannot take the bytes (full, quota, read-only) is final. Each read returns what has arrived (``read1``), so a
    server that drips bytes meets the deadline."""
    read = getattr(src, "read1", src.read)
    bound = size if size is not None else clock.limits.max_bytes
    written, cut = offset, None
    try:
        with open(part, mode) as out:
            while True:
                clock.check()
                try:
                    block = read(min(CHUNK, bound + 1 - written))
                except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError, OSError) as e:
                    cut = e
                    break
                if not block:
                    break
                out.write(block)
                written += len(block)
                bar.update(len(block))
                if written > bound:
                    what = (f"the {size} bytes declared" if size is not None else
                            f"the ceiling of {bound} bytes ({clock.limits.max_bytes_key})")
                    raise DownloadError(f"{clock.url}: the server sends more than {what}: refused, nothing kept")
            out.flush()
            os.fsync(out.fileno())
    except OSError as e:   # a read's errors are caught above: this is the disk
        raise DownloadError(f"cannot write {part}: {e.strerror or type(e).__name__} (disk full or not writable?): "
                            f"nothing kept") from None
    if cut is not None:
        raise _Transient(f"connection cut at {written}{f' of {size}' if size is not None else ''} bytes "
                         f"({type(cut).__name__})")
    if size is not None and written < size:
        raise _Transient(f"connection closed at {written} of {size} bytes")


def _get_http(url: str, part: Path, size: Optional[int], bar, clock: _Clock) -> None:
    offset = part.stat().st_size if (size is not None and part.exists()) else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return
    headers = {"User-Agent": "vitkd"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = _OPENER.open(Request(url, headers=headers), timeout=max(min(clock.limits.timeout_s, clock.left()), 0.01))
    except HTTPError as e:
        e.close()
        if e.code == 416:   # our partial file does not fit the server's: start over
            part.unlink()
            raise _Transient("HTTP 416 (range not satisfiable): starting over") from None
        if e.code in TRANSIENT_HTTP:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
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
        announced = resp.headers.get("Content-Length", "")
        bound = size if size is not None else clock.limits.max_bytes
        if announced.isdigit() and int(announced) > bound - offset:
            declared = (f"{size} bytes are declared" if size is not None else
                        f"the ceiling is {bound} bytes ({clock.limits.max_bytes_key})")
            raise DownloadError(f"{url}: the server announces {int(announced) + offset} bytes, {declared}: "
                                f"refused, nothing kept")
        bar.n = offset
        _copy_stream(resp, part, mode, offset, size, bar, clock)


def _get_file(url: str, part: Path, size: Optional[int], bar, clock: _Clock) -> None:
    src = Path(url2pathname(unquote(urlparse(url).path)))
    if not src.is_file():
        raise DownloadError(f"{url}: file not found")
    with open(src, "rb") as f:
        _copy_stream(f, part, "wb", 0, size, bar, clock)


_GETTERS = {"http": _get_http, "https": _get_http, "file": _get_file}


def fetch(url: str, dest: Path, verify: Callable[[Path], Optional[str]], size: Optional[int] = None,
          limits: Limits = Limits(), progress: Optional[bool] = None,
          log: Callable[[str], None] = lambda m: None, mismatch: str = "does not verify") -> Path:
    """``dest`` holding what ``url`` serves, once ``verify(part)`` (None, or what is wrong in one phrase) accepts it
    (see the module docstring; ``mismatch`` words the refusal: "<url> <mismatch> (<problem>)"). ``dest`` itself is
    not looked at: the caller decides whether a file already there is good. The caller holds the folder's lock when
    other processes may fetch the same file."""
    check_url(url)
    if size is not None and size > limits.max_bytes:
        raise DownloadError(f"{dest.name}: {size} bytes exceed the download ceiling of {limits.max_bytes} bytes "
                            f"({limits.max_bytes_key}): refused, nothing downloaded")
    clock = _Clock(url, limits)
    part = dest.with_name(f".{dest.name}.part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(url, part, verify, size, clock, progress, log, mismatch)
    except DownloadError:   # final: nothing kept
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise
    except _Transient as e:   # the tries are spent: what arrived stays in the .part for the next download
        if size is None:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        raise DownloadError(f"cannot download {url}: {e} (after {limits.retries + 1} tries)") from None
    os.replace(part, dest)
    return dest


def _download(url: str, part: Path, verify: Callable[[Path], Optional[str]], size: Optional[int], clock: _Clock,
              progress: Optional[bool], log: Callable[[str], None], mismatch: str) -> None:
    """``part`` holding the verified file after some tries: :class:`_Transient` when the tries are spent,
    :class:`DownloadError` for a final failure."""
    getter = _GETTERS[urlparse(url).scheme.lower()]
    limits = clock.limits
    resumed = size is not None and part.exists()
    for fresh in range(2 if resumed else 1):   # a .part from before may not belong to this file: one clean retry
        with _progress_bar(size, part.name[1:-len(".part")], progress) as bar:
            for attempt in range(limits.retries + 1):
                clock.check()
                try:
                    getter(url, part, size, bar, clock)
                    break
                except _Transient as e:
                    if attempt == limits.retries:
                        raise
                    wait = limits.backoff_s * (2 ** attempt)
                    log(f"{url}: {e}; retrying in {wait:.1f}s")
                    time.sleep(max(0.0, min(wait, clock.left())))
        problem = verify(part)
        if problem is None:
            return
        part.unlink()
        if fresh == 0 and resumed:
            log(f"resumed {part.name[1:-len('.part')]} does not verify ({problem}): downloading from the start")
            continue
        raise DownloadError(f"{url} {mismatch} ({problem}): refused, nothing kept")
