"""A userspace TCP fault relay for multi-site tests (stdlib only).

The kernel here has no netem and there is no toxiproxy, so the link between
Switchyard and one site (a Tansu broker) is cut, slowed and restored by a
small relay that sits in between:

    client (Switchyard) ──► 127.0.0.1:relay.port ──► upstream (the broker)

    with Relay(("127.0.0.1", broker_port)) as relay:
        relay.bootstrap            # "127.0.0.1:<port>": give this to clients
        relay.cut()                # reset every connection, refuse new ones
        relay.cut("blackhole")     # keep connections, move no bytes
        relay.restore()            # forward again
        relay.set_delay(200)       # +200 ms each way, order preserved

Modes
-----
``forward`` (default)
    Every accepted connection gets its own upstream connection; bytes are
    copied unchanged both ways. Half-closes (FIN) are passed on once the
    data before them was delivered; a reset (RST) on one side resets the
    other; an upstream that refuses the connection makes the relay reset the
    client connection (what a client of a dead site sees).
``cut("reset")``
    Every open connection is reset on both sides (SO_LINGER 0, so the peers
    get an RST, not a FIN), and any data the relay held for them is dropped.
    New connections are accepted and immediately reset, so clients see
    "connection reset" at once instead of a timeout. ``cut()`` returns only
    after all this is done.
``cut("blackhole")``
    A WAN link that silently drops packets: open connections stay open but no
    byte moves in either direction (the relay stops reading and writing, so
    unread data piles up in kernel buffers like unacknowledged segments; data
    the relay already held is not delivered). New connections are accepted
    (the relay's listener cannot refuse a handshake without root) but are
    not connected upstream and move no bytes. Peers see only timeouts.
``restore()``
    Back to forwarding for new connections. Connections killed by a reset
    cut stay dead. Connections held during a blackhole are *reset* (both
    sides) on restore: whatever was "dropped" is never delivered, so they
    could not carry on consistently -- this is what a NAT or stateful
    firewall that lost its flow state does when the link comes back -- and
    clients reconnect, which is the behaviour the tests need to exercise.

Delay
-----
``set_delay(ms)`` delays every chunk read from either side by ``ms`` before
it is written to the other side (order is always preserved; a delay change
applies to data read afterwards). Per connection and direction the relay
holds at most ``max_buffer`` bytes; when that is reached it stops reading
from the sender, so TCP backpressure reaches the sender instead of the relay
buffering without bound (throughput is then bounded by max_buffer / delay,
like a TCP window over a long link).

Implementation: one background thread runs a ``selectors`` event loop over
non-blocking sockets; every public method hands its work to that thread
and waits for it, so state changes are ordered with respect to the data
path and a method's effect is complete when it returns. ``close()`` stops the
thread (joined) and closes every socket.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

__all__ = ["Relay", "RelayError"]

MODES = ("forward", "reset", "blackhole")
CHUNK = 64 * 1024
DEFAULT_MAX_BUFFER = 1024 * 1024
COMMAND_TIMEOUT = 10.0


class RelayError(RuntimeError):
    pass


def _free_port() -> int:
    """A free port outside the kernel's ephemeral range (same policy as the
    fixtures: helpers.allocate_ports)."""
    try:
        from helpers import allocate_ports  # tests/ is on sys.path under pytest

        return allocate_ports(1)
    except ImportError:  # used standalone
        import random

        lo = 15000
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                hi = int(f.read().split()[0]) - 1
        except (OSError, ValueError):
            hi = 32767
        return random.randrange(lo, hi)


def _rst_close(sock: Optional[socket.socket]) -> None:
    """Closes `sock` so that the peer gets an RST (SO_LINGER on, timeout 0)."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _close(sock: Optional[socket.socket]) -> None:
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass


class _Pipe:
    """One direction of one connection: a FIFO of [due_time, memoryview]."""

    __slots__ = ("name", "chunks", "buffered", "eof", "shut", "want_write")

    def __init__(self, name: str):
        self.name = name  # "up" (client -> upstream) or "down"
        self.chunks: deque = deque()
        self.buffered = 0
        self.eof = False  # the source sent FIN
        self.shut = False  # FIN passed on to the destination
        self.want_write = False  # destination said EAGAIN

    def drop(self) -> None:
        self.chunks.clear()
        self.buffered = 0


class _Conn:
    __slots__ = ("cid", "client", "upstream", "connected", "blackholed", "up", "down", "masks")

    def __init__(self, cid: int, client: socket.socket):
        self.cid = cid
        self.client = client
        self.upstream: Optional[socket.socket] = None
        self.connected = False
        self.blackholed = False
        self.up = _Pipe("up")
        self.down = _Pipe("down")
        self.masks: dict[socket.socket, int] = {}

    def __repr__(self) -> str:
        return f"<conn {self.cid} connected={self.connected} blackholed={self.blackholed}>"


class Relay:
    """TCP relay 127.0.0.1:port -> upstream with cut/blackhole/delay faults.

    Counters (thread-safe, read any time): connections_total (accepted and
    forwarded or held), connections_refused (accepted and reset during a
    reset cut), connections_reset (open connections reset by cut/restore),
    bytes_up (client -> upstream, bytes delivered), bytes_down (upstream ->
    client, bytes delivered), active_connections, max_buffered (largest
    number of bytes held for one direction of one connection so far).
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        listen_port: Optional[int] = None,
        *,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        name: Optional[str] = None,
    ):
        if max_buffer < 1:
            raise ValueError("max_buffer must be >= 1")
        self.upstream = (str(upstream[0]), int(upstream[1]))
        self.host = "127.0.0.1"
        self.max_buffer = int(max_buffer)
        self._fixed_port = listen_port
        self.port: int = listen_port or 0
        self.name = name or f"relay->{self.upstream[0]}:{self.upstream[1]}"

        self._lock = threading.Lock()
        self._mode = "forward"
        self._delay = 0.0
        self._stats = {
            "connections_total": 0,
            "connections_refused": 0,
            "connections_reset": 0,
            "bytes_up": 0,
            "bytes_down": 0,
            "max_buffered": 0,
        }
        self._conns: dict[int, _Conn] = {}
        self._next_cid = 0

        self._listener: Optional[socket.socket] = None
        self._sel: Optional[selectors.BaseSelector] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._commands: deque = deque()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._closed = False
        self._crash: Optional[BaseException] = None
        self._bind()

    # ------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def delay_ms(self) -> float:
        return self._delay * 1000.0

    def _stat(self, key: str) -> int:
        with self._lock:
            return self._stats[key]

    connections_total = property(lambda self: self._stat("connections_total"))
    connections_refused = property(lambda self: self._stat("connections_refused"))
    connections_reset = property(lambda self: self._stat("connections_reset"))
    bytes_up = property(lambda self: self._stat("bytes_up"))
    bytes_down = property(lambda self: self._stat("bytes_down"))
    max_buffered = property(lambda self: self._stat("max_buffered"))

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._stats)
            out["active_connections"] = len(self._conns)
        out["mode"] = self._mode
        out["delay_ms"] = self.delay_ms
        return out

    def start(self) -> "Relay":
        if self._closed:
            raise RelayError(f"{self.name} is closed")
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=f"relay:{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = COMMAND_TIMEOUT) -> None:
        """Stops the loop thread (joined) and closes every socket. Open
        connections get a normal close (FIN). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._stopping = True
            self._wake()
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RelayError(f"{self.name}: loop thread did not stop within {timeout}s")
        else:
            self._teardown()

    def cut(self, mode: str = "reset") -> None:
        """mode "reset": RST every open connection and every new one;
        mode "blackhole": connections stay open, no bytes move."""
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"cut mode must be 'reset' or 'blackhole', not {mode!r}")
        self._call(lambda: self._do_cut(mode))

    def restore(self) -> None:
        """Forward again. Blackholed connections are reset (both sides)."""
        self._call(self._do_restore)

    def set_delay(self, ms: float) -> None:
        """Latency added to every chunk, each direction (0 = none)."""
        if ms < 0:
            raise ValueError("delay must be >= 0")

        def apply():
            self._delay = ms / 1000.0

        self._call(apply)

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Relay {self.bootstrap} -> {self.upstream[0]}:{self.upstream[1]} mode={self._mode}>"

    # ------------------------------------------------------------------
    # setup / commands
    # ------------------------------------------------------------------

    def _bind(self) -> None:
        attempts = 1 if self._fixed_port else 20
        last: Optional[OSError] = None
        for _ in range(attempts):
            port = self._fixed_port or _free_port()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, port))
                s.listen(128)
            except OSError as e:
                s.close()
                last = e
                continue
            s.setblocking(False)
            self._listener = s
            self.port = port
            break
        else:
            raise RelayError(f"cannot listen on {self.host}:{self._fixed_port or '<free port>'}: {last}")
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, ("listener", None))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already full of wake-ups, or closed

    def _call(self, fn: Callable[[], None]) -> None:
        """Runs `fn` on the loop thread and waits for it (or directly if the
        loop is not running)."""
        if self._closed:
            raise RelayError(f"{self.name} is closed")
        t = self._thread
        if t is None or not t.is_alive():
            if self._crash is not None:
                raise RelayError(f"{self.name}: loop thread crashed: {self._crash!r}") from self._crash
            fn()
            return
        if threading.current_thread() is t:
            fn()
            return
        done = threading.Event()
        box: list[BaseException] = []

        def run():
            try:
                fn()
            except BaseException as e:  # handed back to the caller
                box.append(e)
            finally:
                done.set()

        self._commands.append(run)
        self._wake()
        if not done.wait(COMMAND_TIMEOUT):
            raise RelayError(
                f"{self.name}: loop thread did not run a command within {COMMAND_TIMEOUT}s (crash: {self._crash!r})"
            )
        if box:
            raise box[0]

    def _do_cut(self, mode: str) -> None:
        self._mode = mode
        if mode == "reset":
            for c in list(self._conns.values()):
                self._reset_conn(c, counted=True)
        else:
            for c in self._conns.values():
                c.blackholed = True
                c.up.want_write = c.down.want_write = False
                self._update_interest(c)

    def _do_restore(self) -> None:
        self._mode = "forward"
        for c in list(self._conns.values()):
            if c.blackholed:
                self._reset_conn(c, counted=True)

    # ------------------------------------------------------------------
    # event loop (runs on self._thread only)
    # ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._run_commands()
                timeout = self._next_timeout()
                for key, mask in self._sel.select(timeout):
                    kind, conn = key.data
                    if kind == "listener":
                        self._accept()
                    elif kind == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                    elif conn.cid in self._conns:
                        self._on_event(conn, key.fileobj, mask)
                self._run_commands()
                self._pump_all()
        except BaseException as e:  # keep the failure for _call() to report
            self._crash = e
            raise
        finally:
            self._run_commands()  # release any waiter
            self._teardown()

    def _run_commands(self) -> None:
        while self._commands:
            self._commands.popleft()()

    def _teardown(self) -> None:
        for c in list(self._conns.values()):
            self._drop_conn(c, rst=False)
        if self._sel is not None:
            try:
                self._sel.close()
            except Exception:
                pass
        _close(self._listener)
        _close(self._wake_r)
        _close(self._wake_w)

    def _next_timeout(self) -> Optional[float]:
        if not self._conns:
            return None
        now = time.monotonic()
        soonest: Optional[float] = None
        for c in self._conns.values():
            if c.blackholed:
                continue
            for pipe, ready in ((c.up, c.connected), (c.down, True)):
                if pipe.chunks and ready and not pipe.want_write:
                    due = pipe.chunks[0][0]
                    if soonest is None or due < soonest:
                        soonest = due
        if soonest is None:
            return None
        return max(0.0, soonest - now)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # retried on the next readiness event
                if e.errno == errno.ECONNABORTED:
                    continue
                raise
            if self._mode == "reset":
                _rst_close(sock)
                with self._lock:
                    self._stats["connections_refused"] += 1
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._next_cid += 1
            c = _Conn(self._next_cid, sock)
            with self._lock:
                self._conns[c.cid] = c
                self._stats["connections_total"] += 1
            if self._mode == "blackhole":
                c.blackholed = True  # never connected upstream; reset on restore
            else:
                self._connect_upstream(c)
            self._update_interest(c)

    def _connect_upstream(self, c: _Conn) -> None:
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.upstream = up
        err = up.connect_ex(self.upstream)
        if err == 0:
            c.connected = True
        elif err not in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            self._reset_conn(c)

    def _on_event(self, c: _Conn, sock: socket.socket, mask: int) -> None:
        if sock is c.upstream and not c.connected:
            if mask & (selectors.EVENT_WRITE | selectors.EVENT_READ):
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._reset_conn(c)  # upstream refused: client gets an RST
                    return
                c.connected = True
            self._update_interest(c)
            return
        if c.blackholed:
            return
        if mask & selectors.EVENT_READ:
            pipe = c.up if sock is c.client else c.down
            if not self._read(c, sock, pipe):
                return
        if mask & selectors.EVENT_WRITE:
            if sock is c.client:
                c.down.want_write = False
            else:
                c.up.want_write = False
        # writes happen in _pump_all

    def _read(self, c: _Conn, sock: socket.socket, pipe: _Pipe) -> bool:
        room = self.max_buffer - pipe.buffered
        if room <= 0 or pipe.eof:
            return True
        try:
            data = sock.recv(min(CHUNK, room))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._reset_conn(c)  # RST (or other error) from one side resets the other
            return False
        if not data:
            pipe.eof = True
        else:
            pipe.chunks.append([time.monotonic() + self._delay, memoryview(data)])
            pipe.buffered += len(data)
            if pipe.buffered > self._stats["max_buffered"]:
                with self._lock:
                    self._stats["max_buffered"] = max(self._stats["max_buffered"], pipe.buffered)
        self._update_interest(c)
        return True

    def _pump_all(self) -> None:
        if not self._conns:
            return
        now = time.monotonic()
        for c in list(self._conns.values()):
            if c.blackholed or c.cid not in self._conns:
                continue
            if c.connected:
                if not self._flush(c, c.up, c.upstream, now, "bytes_up"):
                    continue
            if not self._flush(c, c.down, c.client, now, "bytes_down"):
                continue
            if c.up.shut and c.down.shut:
                self._drop_conn(c, rst=False)
            else:
                self._update_interest(c)

    def _flush(self, c: _Conn, pipe: _Pipe, dst: socket.socket, now: float, counter: str) -> bool:
        sent_total = 0
        while pipe.chunks and not pipe.want_write:
            entry = pipe.chunks[0]
            if entry[0] > now:
                break
            view = entry[1]
            try:
                n = dst.send(view)
            except (BlockingIOError, InterruptedError):
                pipe.want_write = True
                break
            except OSError:
                self._reset_conn(c)
                return False
            sent_total += n
            pipe.buffered -= n
            if n < len(view):
                entry[1] = view[n:]
                pipe.want_write = True
                break
            pipe.chunks.popleft()
        if sent_total:
            with self._lock:
                self._stats[counter] += sent_total
        if pipe.eof and not pipe.chunks and not pipe.shut:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            pipe.shut = True
        return True

    def _update_interest(self, c: _Conn) -> None:
        if c.cid not in self._conns:
            return
        client_mask = 0
        up_mask = 0
        if not c.blackholed:
            if not c.up.eof and c.up.buffered < self.max_buffer:
                client_mask |= selectors.EVENT_READ
            if c.down.want_write:
                client_mask |= selectors.EVENT_WRITE
            if c.upstream is not None:
                if not c.connected:
                    up_mask = selectors.EVENT_WRITE
                else:
                    if not c.down.eof and c.down.buffered < self.max_buffer:
                        up_mask |= selectors.EVENT_READ
                    if c.up.want_write:
                        up_mask |= selectors.EVENT_WRITE
        elif c.upstream is not None and not c.connected:
            up_mask = 0  # a blackholed link completes nothing
        self._set_mask(c, c.client, client_mask)
        if c.upstream is not None:
            self._set_mask(c, c.upstream, up_mask)

    def _set_mask(self, c: _Conn, sock: socket.socket, mask: int) -> None:
        old = c.masks.get(sock, 0)
        if mask == old:
            return
        if old and mask:
            self._sel.modify(sock, mask, ("conn", c))
        elif mask:
            self._sel.register(sock, mask, ("conn", c))
        else:
            self._sel.unregister(sock)
        c.masks[sock] = mask

    def _unregister(self, c: _Conn) -> None:
        for sock, mask in list(c.masks.items()):
            if mask:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError, OSError):
                    pass
        c.masks.clear()

    def _reset_conn(self, c: _Conn, counted: bool = False) -> None:
        self._drop_conn(c, rst=True)
        if counted:
            with self._lock:
                self._stats["connections_reset"] += 1

    def _drop_conn(self, c: _Conn, rst: bool) -> None:
        self._unregister(c)
        c.up.drop()
        c.down.drop()
        closer = _rst_close if rst else _close
        closer(c.client)
        closer(c.upstream)
        with self._lock:
            self._conns.pop(c.cid, None)


if __name__ == "__main__":  # manual use: python tests/relay.py UPSTREAM_PORT [LISTEN_PORT]
    import sys

    up_port = int(sys.argv[1])
    lp = int(sys.argv[2]) if len(sys.argv) > 2 else None
    with Relay(("127.0.0.1", up_port), lp) as r:
        print(f"relaying {r.bootstrap} -> 127.0.0.1:{up_port}; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(5)
                print(r.stats(), flush=True)
        except KeyboardInterrupt:
            pass
