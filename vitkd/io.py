"""Atomic file writes: a temp file in the same folder, fsync, then rename. Existing files are never
half-overwritten, and a crash leaves either the old file or the new one. And the two digests everything
else uses: a file's sha256 and a JSON-able object's."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

__all__ = ["LockBusy", "LockChanging", "held_lock", "atomic_writer", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save",
           "atomic_save_safetensors", "atomic_write_json", "atomic_write_csv", "sha256_file", "json_digest"]


@contextlib.contextmanager
def atomic_writer(path: Union[str, Path], mode: str = "wb"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600: outputs follow the umask like any other file
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:   # a failed write names no file: name the one written
            e.filename = str(path)
        raise


class LockBusy(OSError):
    """Another process holds the lock (``holder``: its pid as it wrote it, or "")."""

    def __init__(self, lock: Path, holder: str):
        super().__init__(f"{lock} is held{f' by pid {holder}' if holder else ''}")
        self.lock, self.holder = lock, holder


class LockChanging(OSError):
    """The lock file kept being replaced while it was taken (a hundred releases in a row)."""


@contextlib.contextmanager
def held_lock(lock: Union[str, Path], wait: bool):
    """An exclusive ``flock`` on the file ``lock`` for the block, made with the folders it needs; ``wait``: block
    until it is free, else :class:`LockBusy` at once. The kernel drops a lock when its process ends, however it
    ends, so a lock file left by a killed process blocks nobody. On release the lock file goes, and so do the
    folders made to hold it when empty (a holder that then finds the file it waited on removed takes it anew).
    The holder's pid is written into the file. An ``OSError`` from making the file or its folders is the
    caller's to word."""
    import fcntl
    lock = Path(lock)
    made, probe = [], lock.parent
    while not probe.exists() and probe != probe.parent:   # the folders this lock creates, deepest first
        made.append(probe)
        probe = probe.parent
    for _ in range(100):   # each retry follows another holder's release: a few at most
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:   # the folder went with a holder's release in between: again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockBusy(lock, holder if holder.isdigit() else "") from None
        try:   # the file we hold is still the lock file (a holder removes it on release)
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise LockChanging(f"cannot take the lock {lock}: it keeps changing")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
        for folder in made:   # a folder that holds anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes):
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str):
    with atomic_writer(path, "w") as f:
        f.write(text)


def atomic_write_json(path, obj: Any):
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_torch_save(obj: Any, path):
    import torch
    with atomic_writer(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:   # torch's zip writer reports a failed write (a full disk) as its own error
            cause = e.__cause__ or e.__context__
            if isinstance(cause, OSError):
                raise cause from None
            raise


def atomic_save_safetensors(tensors: dict, path, metadata: dict = None):
    from safetensors.torch import save
    seen, out = set(), {}
    for k, v in tensors.items():   # tensors shared between keys (tied / multiplexed weights) are stored per key
        v = v.detach().cpu()
        key = v.untyped_storage().data_ptr()
        out[k] = v.clone() if key in seen else v.contiguous()
        seen.add(key)
    data = save(out, metadata={k: str(v) for k, v in sorted((metadata or {}).items())})
    atomic_write_bytes(path, _canonical_safetensors(data))


def _canonical_safetensors(data: bytes) -> bytes:
    """The same file with its JSON header's keys sorted: equal tensors and metadata give equal bytes (the
    writer's metadata map has no stable order). Data offsets are relative to the data block: unchanged."""
    import struct
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + data[8 + n:]


def is_p_value(column: str) -> bool:
    """A column that holds a p-value (``p``, ``p_raw``, ``p_holm``, ``mcnemar_p``, ...)."""
    return column == "p" or column.startswith("p_") or column.endswith("_p")


P_VALUE_FORMAT = "{:.4g}"   # significant digits: 0.000581 stays 0.000581, 3e-07 is not written 0.0000


def atomic_write_csv(path, rows, float_format: str = "{:.6g}"):
    """Rows (dicts) as CSV; the header is the union of their keys in first-seen order. p-value columns
    (:func:`is_p_value`) are written with 4 significant digits whatever ``float_format`` says."""
    import csv
    import io
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in rows:
        w.writerow({k: ((P_VALUE_FORMAT if is_p_value(k) else float_format).format(v) if isinstance(v, float) else v)
                    for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def sha256_file(path: Union[str, Path]) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """The sha256 (hex) of a JSON-able object in canonical form: keys sorted, anything else through ``str``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
