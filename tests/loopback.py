"""A loopback HTTP server whose misbehaviour each test chooses (the zoo's and the datasets' download tests).

``serve(root)`` serves the files under ``root`` on 127.0.0.1 (a free port) from a daemon thread; returns
``(server, state, base URL)``. ``state.reset(**{file name: mode})`` picks each file's misbehaviour: ok | no_range |
cut_once | 503_once | corrupt | redirect | redirect_twice | drip (one byte a second) | oversize (no
Content-Length) | oversize_declared; ``state.requests`` records (file name, Range header, status).
"""
from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

__all__ = ["State", "serve"]

CHUNK = 1 << 16


class State:
    def __init__(self, root: Path):
        self.root = root
        self.reset()

    def reset(self, redirect_to: str = "", **modes):
        # {file name: mode}: ok | no_range | cut_once | 503_once | corrupt | redirect | redirect_twice | drip |
        # oversize (no Content-Length) | oversize_declared
        self.modes = dict(modes)
        self.redirect_to = redirect_to  # where redirect modes send the client (the last hop)
        self.requests = []              # (file name, Range header or None, status)
        self.spent = set()
        self.sent = 0                   # body bytes the drip and oversize modes managed to send


def _handler(state: State):
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            rel = self.path.lstrip("/")
            p = state.root / rel
            name = Path(rel).name
            mode = state.modes.get(name, "ok")
            rng = self.headers.get("Range")
            if rel.startswith("hop/"):
                p = state.root / rel[len("hop/"):]
            if not p.is_file():
                state.requests.append((name, rng, 404))
                self.send_error(404, "Not Found")
                return
            if mode in ("redirect", "redirect_twice"):
                hop = mode == "redirect_twice" and not rel.startswith("hop/")
                state.requests.append((name, rng, 302))
                self.send_response(302)
                self.send_header("Location", f"/hop/{rel}" if hop else state.redirect_to)
                self.end_headers()
                return
            if mode == "503_once" and name not in state.spent:
                state.spent.add(name)
                state.requests.append((name, rng, 503))
                self.send_error(503, "Service Unavailable")
                return
            data = p.read_bytes()
            if mode == "corrupt":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            start = 0
            if rng and mode != "no_range":
                start = int(rng.split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            if mode in ("drip", "oversize", "oversize_declared"):
                self._stream(name, rng, body, mode)
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            state.requests.append((name, rng, 206 if start else 200))
            if mode == "cut_once" and name not in state.spent:
                state.spent.add(name)
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

        def _stream(self, name, rng, body, mode):
            """drip: the file one byte a second; oversize: the file, then up to 256 MiB more, with no length
            (oversize_declared: that length announced). Stops when the client hangs up; counts what it sent."""
            extra = 0 if mode == "drip" else 256 << 20
            if mode != "oversize":
                self.send_header("Content-Length", str(len(body) + extra))
            self.end_headers()
            state.requests.append((name, rng, 200))
            if mode == "drip":
                blocks = (body[i:i + 1] for i in range(len(body)))
            else:
                blocks = iter([body] + [bytes(CHUNK)] * (extra // CHUNK))
            try:
                for block in blocks:
                    self.wfile.write(block)
                    self.wfile.flush()
                    state.sent += len(block)
                    time.sleep(1.0 if mode == "drip" else 0.0)
            except OSError:   # the client hung up
                pass
    return H


def serve(root: Path):
    state = State(root)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, state, f"http://127.0.0.1:{srv.server_address[1]}/"
