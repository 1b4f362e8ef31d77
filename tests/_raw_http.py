"""HTTP/1.1 over plain sockets, for tests that need to misbehave like a hostile client."""

from __future__ import annotations

import socket
import time

Address = tuple[str, int]


def connect(address: Address, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def get_request(path: str, extra_headers: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: test\r\n".encode() + extra_headers + b"\r\n"


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a content-length body: status, headers (lower-case names), body.

    Reads exactly one response (its head a byte at a time), so pipelined
    answers stay in the socket for the next call.
    """
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"closed before a whole response head: {head!r}")
        head += byte
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed before the whole response body")
        body += chunk
    return int(status_line.split()[1]), headers, body


def get(sock: socket.socket, path: str) -> tuple[int, dict[str, str], bytes]:
    sock.sendall(get_request(path))
    return read_response(sock)


def seconds_until_closed(sock: socket.socket, within: float) -> float:
    """Seconds until the peer closes (reading and dropping data); fails past ``within``."""
    start = time.monotonic()
    deadline = start + within
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"still open after {within:g} s")
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                break
        except ConnectionResetError:
            break
        except TimeoutError:
            continue
    return time.monotonic() - start


def is_closed(sock: socket.socket) -> bool:
    """Whether the peer has closed (without waiting; data already sent is dropped)."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)
