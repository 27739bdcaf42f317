"""The HTTP port holds against sockets, as the gRPC port does: a slow or endless request is cut at the
request deadline, connections past the cap are closed at once (the gRPC port and health keep serving
with few descriptors left), ambiguous framing is refused and closed, an oversized body is 413, and
failed accepts are logged once per interval."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import API_KEY, body, clean_env, gateway, process, process_ready, run, stream_request

SERVICE = "/claude_gateway.v1.ChatService"
CREATE = f"{SERVICE}/CreateMessage"


REQUEST_DEADLINE = 3  # seconds: GATEWAY_HTTP_REQUEST_TIMEOUT of the gateways with few descriptors


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def answer_then_close(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took (or what came in
    ``timeout`` seconds if it never closes)."""
    started = time.monotonic()
    sock.settimeout(0.2)
    got = b""
    while time.monotonic() - started < timeout:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got, time.monotonic() - started


def trickle(sock: socket.socket, pieces: Iterator[bytes], every: float, stop: threading.Event) -> None:
    """Send ``pieces`` one each ``every`` seconds until the server closes or ``stop`` is set."""
    for piece in pieces:
        if stop.wait(every):
            return
        try:
            sock.sendall(piece)
        except OSError:
            return


@pytest.mark.parametrize("how", ["head a byte at a time", "chunked body that never ends"])
def test_a_slow_request_is_cut_at_the_request_deadline_with_408(how: str) -> None:
    """With GATEWAY_HTTP_REQUEST_TIMEOUT=1, a request whose head (or chunked body, under connect-timeout-ms 500)
    keeps trickling in is answered 408 and closed after about a second; it stayed open for good before."""

    async def go() -> None:
        async with gateway(http_listen="127.0.0.1:0", http_request_timeout=1.0) as h:
            port = h.gateway.http_port
            assert port is not None
            result = await asyncio.to_thread(slow_request, port, how)
            got, took = result
            print(f"{how}: closed after {took:.2f}s with {got[:40]!r}")
            assert got.startswith(b"HTTP/1.1 408"), got
            assert 0.8 < took < 4.0

    run(go)


def slow_request(port: int, how: str) -> tuple[bytes, float]:
    sock = connect(port)
    stop = threading.Event()
    try:
        if how == "head a byte at a time":
            sock.sendall(f"POST {CREATE} HTTP/1.1\r\nhost: x\r\n".encode())
            pieces: Iterator[bytes] = (bytes([b]) for b in b"x-slow: " + b"a" * 1000)
        else:
            head = (
                f"POST {CREATE} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                "connect-timeout-ms: 500\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            sock.sendall(head.encode())
            pieces = (b"1\r\n \r\n" for _ in range(1000))
        sender = threading.Thread(target=trickle, args=(sock, pieces, 0.05, stop), daemon=True)
        sender.start()
        return answer_then_close(sock)
    finally:
        stop.set()
        sock.close()


@pytest.mark.parametrize(
    "head",
    [
        f"POST {CREATE} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        f"POST {CREATE} HTTP/1.1\nhost: x\ncontent-length: 2\n\n{{}}",
        "GET /v1/models HTTP/1.1\r\nhost: x\nx-a: b\r\n\r\n",
    ],
    ids=["content-length and transfer-encoding", "bare LF line ends", "one bare LF"],
)
def test_ambiguous_framing_is_400_and_the_connection_closes(head: str) -> None:
    """RFC 9112 6.1: a request with both Content-Length and Transfer-Encoding, or a head with bare LF line
    ends, is refused 400 and its connection closed (it was served, and the connection kept)."""

    async def go() -> None:
        async with gateway(http_listen="127.0.0.1:0") as h:
            port = h.gateway.http_port
            assert port is not None

            def exchange() -> tuple[bytes, float]:
                with connect(port) as sock:
                    sock.sendall(head.encode())
                    return answer_then_close(sock, timeout=5)

            got, took = await asyncio.to_thread(exchange)
            assert got.startswith(b"HTTP/1.1 400"), got
            assert b"connection: close" in got.lower()
            assert took < 4.0, "the connection was kept open"
            assert h.sim.requests == []

    run(go)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_message_limit_is_413_not_429(framing: str) -> None:
    """A Connect body over GATEWAY_MAX_MESSAGE_BYTES: 413 (clients read 429 as 'retry later'), at once for a
    content-length, as the bound is passed for a chunked body; the connection closes."""
    limit = 64 * 1024

    async def go() -> None:
        async with gateway(http_listen="127.0.0.1:0", max_message_bytes=limit) as h:
            port = h.gateway.http_port
            assert port is not None

            def exchange() -> tuple[bytes, float]:
                with connect(port) as sock:
                    head = f"POST {CREATE} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    if framing == "content-length":
                        sock.sendall(f"{head}content-length: {limit * 4}\r\n\r\n".encode())
                    else:
                        sock.sendall(f"{head}transfer-encoding: chunked\r\n\r\n".encode())
                        chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
                        with contextlib.suppress(OSError):
                            for _ in range(8):
                                sock.sendall(chunk)
                    return answer_then_close(sock, timeout=5)

            got, took = await asyncio.to_thread(exchange)
            assert got.startswith(b"HTTP/1.1 413"), got[:200]
            assert took < 4.0
            assert h.sim.requests == []

    run(go)


@contextlib.contextmanager
def gateway_with_few_descriptors(files: int, **env: str) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    """A simulator process and a gateway process whose open-file limit is ``files``, its HTTP port on; yields
    the gateway, its gRPC target and its HTTP port (bound by the gateway itself: a port found free beforehand
    can be taken by another test's connection before the gateway binds it)."""
    base = clean_env()
    with process(["-m", "simulator", "--port", "0", "--api-key", API_KEY], base, "simulator listening on ") as (
        _,
        base_url,
    ):
        settings = {
            "GATEWAY_LISTEN": "127.0.0.1:0",
            "GATEWAY_HTTP_LISTEN": "127.0.0.1:0",
            "GATEWAY_HTTP_REQUEST_TIMEOUT": str(REQUEST_DEADLINE),
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": base_url,
            **env,
        }

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

        with process_ready(
            ["-m", "server"], {**base, **settings}, "gateway listening on ", stderr=subprocess.PIPE, preexec_fn=limit
        ) as (gw, rest):
            target, url = rest.split()[:2]  # "127.0.0.1:PORT http://127.0.0.1:HTTP_PORT/"
            yield gw, target, int(url.rstrip("/").rsplit(":", 1)[1])


async def grpc_still_serves(target: str) -> None:
    """Health answers SERVING and a call streams to its end, over a new connection."""
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        call = channel.unary_stream(f"{SERVICE}/StreamMessage")
        request = stream_request(body("Hi [[sim:tokens 3]]")).SerializeToString()
        replies = [r async for r in call(request, timeout=30)]
        assert replies


def half_sent_heads(port: int, count: int) -> list[socket.socket]:
    """``count`` connections to the HTTP port, each with half a request head sent."""
    socks = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(f"POST {CREATE} HTTP/1.1\r\nhost: x\r\n".encode())
        except OSError:
            continue
        socks.append(sock)
    return socks


def closed_by_server(socks: list[socket.socket], until: float) -> int:
    """How many of ``socks`` the server has closed (whatever it answered first) by ``time.monotonic()`` ``until``;
    it returns as soon as all are. A socket closed before is counted again: its end of stream stays readable."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    try:
        while selector.get_map() and (left := until - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                readable = key.fileobj
                assert isinstance(readable, socket.socket)
                try:
                    data = readable.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(readable)
                    closed += 1
    finally:
        selector.close()
    return closed


def test_half_sent_heads_cannot_take_the_descriptors_grpc_and_health_need() -> None:
    """With 256 open files, 400 half-sent HTTP request heads: past the cap (by default half the open-file limit)
    they are closed at once, gRPC health and a gRPC call still work meanwhile, and at the request deadline
    the rest are closed too. (Before, 1,100 such heads under a 1,024 limit took down gRPC and health.)"""
    with gateway_with_few_descriptors(256) as (_, target, http_port):
        start = time.monotonic()
        socks = half_sent_heads(http_port, 400)
        try:
            asyncio.run(grpc_still_serves(target))
            # Counted up to half a second before the request deadline (3 s) could close any of them: what is
            # closed by then was closed for being past the cap, however busy the machine.
            early = closed_by_server(socks, until=start + REQUEST_DEADLINE - 0.5)
            print(f"{len(socks)} connections made, {early} closed before the request deadline")
            assert early >= len(socks) - 128 - 16  # the cap's 128 kept, and a few the probe saw closed late
            assert closed_by_server(socks, until=time.monotonic() + 30) == len(socks)  # at the deadline, the rest
            asyncio.run(grpc_still_serves(target))
        finally:
            for sock in socks:
                sock.close()


def test_failed_accepts_are_logged_once_per_interval() -> None:
    """With the cap lifted above the open-file limit, connections past the descriptors make accept() fail
    again and again: the gateway logs it once, not once per attempt (it wrote 108 MB in 20 s)."""
    with gateway_with_few_descriptors(128, GATEWAY_HTTP_MAX_CONNECTIONS="100000") as (gw, target, http_port):
        socks = half_sent_heads(http_port, 300)
        try:
            time.sleep(2.5)
        finally:
            for sock in socks:
                sock.close()
        asyncio.run(grpc_still_serves(target))
        gw.terminate()
        assert gw.stderr is not None
        log = gw.stderr.read()
    lines = [line for line in log.splitlines() if "accept" in line.lower()]
    print(f"{len(lines)} log lines about accept: {lines[:3]}")
    assert 1 <= len(lines) <= 3
    assert "Traceback" not in log


def server_end(client: tuple[str, int], server: tuple[str, int]) -> socket.socket | None:
    """This process's socket at the other end of a loopback connection (a duplicate: closing it leaves the
    original open), found among its descriptors; None if there is none."""
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found = socket.fromfd(int(entry), socket.AF_INET, socket.SOCK_STREAM)
            with contextlib.suppress(OSError):
                if found.getsockname() == server and found.getpeername() == client:
                    return found
            found.close()
    return None


def test_every_http_connection_sends_without_delay() -> None:
    """Each connection the HTTP port keeps has TCP_NODELAY on, as the gRPC port's have: a small write after
    another (a stream's event after its head, its last chunk after an event) leaves at once instead of
    waiting for the client's delayed ACK (up to 40 ms each)."""

    async def test() -> None:
        async with gateway(http_listen="127.0.0.1:0") as h:
            assert h.gateway.http_port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", h.gateway.http_port)
            writer.write(b"GET /v1/models HTTP/1.1\r\nhost: gateway\r\nx-api-key: anything\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 ")
            server = server_end(writer.get_extra_info("sockname"), writer.get_extra_info("peername"))
            assert server is not None, "no socket of this process at the other end"
            with server:
                assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            writer.close()
            await writer.wait_closed()

    run(test)
