"""Serial transport: the host end of a board's UART bridge (pyserial), with timeouts everywhere.

:class:`SerialTransport` moves bytes (``send``/``recv``) and whole frames of
:mod:`tritium.protocol` (``transact``) over any port pyserial can open: a USB serial device
(``/dev/ttyUSB1``, ``/dev/ttyACM0``, ``COM5``), a pseudo-terminal (the simulated board of the
tests) or a pyserial URL (``socket://host:port``, ``loop://``).

Nothing blocks forever: every read has a deadline and raises :class:`TransportTimeout` (with
the bytes received so far) when it passes; a port that disappears (unplugged board, closed
pty) raises :class:`TransportClosed`; a reply that does not parse raises
:class:`FrameError`. All three derive from :class:`TransportError`.

Example
-------
>>> from tritium.host.transport_serial import SerialTransport
>>> with SerialTransport("/dev/ttyUSB1", baud=1_000_000, timeout=2.0) as t:  # doctest: +SKIP
...     t.send(b"...")
...     reply = t.recv(8)
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

__all__ = [
    "DEFAULT_BAUD",
    "BridgeError",
    "FrameError",
    "SerialTransport",
    "TransportClosed",
    "TransportError",
    "TransportTimeout",
    "open_serial",
]

try:  # pyserial's POSIX backend lets termios.error through (e.g. tcdrain on a hung-up pty)
    import termios

    _TERMIOS_ERRORS: tuple[type[BaseException], ...] = (termios.error,)
except ImportError:  # pragma: no cover - Windows
    _TERMIOS_ERRORS = ()

#: The board tops' UART rate (:data:`tritium.fpga.boards.DEFAULT_BAUD`).
DEFAULT_BAUD = 1_000_000


class TransportError(RuntimeError):
    """The device could not be reached or answered wrongly; the message says what to check."""


class TransportTimeout(TransportError, TimeoutError):
    """No (complete) answer within the timeout. ``received`` holds the bytes that did come."""

    def __init__(self, message: str, received: bytes = b""):
        super().__init__(message)
        self.received = received


class TransportClosed(TransportError):
    """The port went away (board unplugged, pseudo-terminal closed) or was closed."""


class FrameError(TransportError):
    """A reply frame is malformed (bad header, length, checksum, or an unexpected reply)."""


def _pyserial():
    try:
        import serial  # pyserial
    except ImportError:
        raise TransportError(
            "the serial transport needs pyserial: run `pip install pyserial` "
            "(or `pip install -e \".[serial]\"`)"
        ) from None
    return serial


def open_serial(port: str, baud: int = DEFAULT_BAUD, *, write_timeout: float = 2.0):
    """Open ``port`` (device path or pyserial URL) raw, 8N1, non-blocking reads.

    Raises
    ------
    TransportClosed
        When the port cannot be opened (the message names it and suggests what to check).
    """
    serial = _pyserial()
    try:
        ser = serial.serial_for_url(port, baudrate=baud, bytesize=8, parity="N", stopbits=1,
                                    timeout=0, write_timeout=write_timeout, do_not_open=True)
        ser.open()
    except (serial.SerialException, OSError, ValueError) as e:
        raise TransportClosed(
            f"cannot open serial port {port!r}: {e}. Is the board plugged in and is this its "
            "UART (ULX3S: /dev/ttyUSB0; iCEBreaker: the second FT2232H channel, usually "
            "/dev/ttyUSB1)? Do you have permission (group dialout)?"
        ) from None
    return ser


class SerialTransport:
    """Byte and frame transport over a serial port.

    Parameters
    ----------
    port : str
        Device path or pyserial URL.
    baud : int
        Line rate (must match the bitstream's, default 1 Mbaud).
    timeout : float
        Default seconds a :meth:`recv` / :meth:`transact` may wait for its bytes.
    serial : object, optional
        An already open pyserial-like object (``read``, ``write``, ``flush``, ``close``,
        ``in_waiting``, ``reset_input_buffer``) to use instead of opening ``port``.
    """

    def __init__(self, port: str = "", baud: int = DEFAULT_BAUD, *, timeout: float = 2.0,
                 serial: Any = None):
        if timeout <= 0:
            raise ValueError(f"timeout={timeout}; timeout must be > 0 seconds")
        self.port = port or getattr(serial, "port", "") or "<serial>"
        self.baud = baud
        self.timeout = float(timeout)
        self._ser = serial if serial is not None else open_serial(port, baud,
                                                                  write_timeout=timeout)
        self._rxbuf = bytearray()

    # ------------------------------------------------------------------ context
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._ser is None else "open"
        return f"SerialTransport({self.port!r}, baud={self.baud}, {state})"

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def close(self) -> None:
        """Close the port (idempotent)."""
        ser, self._ser = self._ser, None
        if ser is not None:
            with contextlib.suppress(Exception):  # closing a dead port must not raise
                ser.close()

    # ------------------------------------------------------------------ bytes
    def _port(self):
        if self._ser is None:
            raise TransportClosed(f"serial port {self.port!r} is closed")
        return self._ser

    def _lost(self, e: BaseException) -> TransportClosed:
        self.close()
        return TransportClosed(f"serial port {self.port!r} went away ({e}); is the board "
                               "still connected?")

    def send(self, data: bytes) -> None:
        """Write all of ``data`` (raises :class:`TransportTimeout` when the port does not take
        it within the timeout, :class:`TransportClosed` when the port is gone)."""
        ser = self._port()
        serial = _pyserial()
        try:
            n = ser.write(bytes(data))
            ser.flush()
        except serial.SerialTimeoutException:
            raise TransportTimeout(
                f"writing {len(data)} bytes to {self.port!r} took longer than "
                f"{self.timeout:g} s (flow control stuck?)"
            ) from None
        except (serial.SerialException, OSError, *_TERMIOS_ERRORS) as e:
            raise self._lost(e) from None
        if n is not None and n != len(data):
            raise TransportTimeout(f"only {n} of {len(data)} bytes written to {self.port!r}")

    def _read_some(self, wait: float) -> bytes:
        """Bytes available now, waiting at most ``wait`` seconds for the first one."""
        ser = self._port()
        serial = _pyserial()
        try:
            ser.timeout = max(wait, 0.0)
            chunk = ser.read(max(1, ser.in_waiting or 1))
            if chunk and ser.in_waiting:
                ser.timeout = 0
                chunk += ser.read(ser.in_waiting)
        except (serial.SerialException, OSError, TypeError, *_TERMIOS_ERRORS) as e:
            # pyserial raises SerialException (or TypeError on some closed fds) on EIO
            raise self._lost(e) from None
        return chunk

    def recv(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly ``n`` bytes, or :class:`TransportTimeout` after ``timeout`` seconds
        (default: the transport's) with the partial data in ``.received``."""
        if n < 0:
            raise ValueError(f"n={n}; n must be >= 0")
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while len(self._rxbuf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                got = bytes(self._rxbuf)
                self._rxbuf.clear()
                raise TransportTimeout(
                    f"timed out after {limit:g} s waiting for {n} bytes from {self.port!r}: "
                    f"received {len(got)} ({got[:16].hex()}{'...' if len(got) > 16 else ''}); "
                    "is the bitstream loaded and the baud rate right?",
                    got,
                )
            self._rxbuf += self._read_some(min(left, 0.05))
        out = bytes(self._rxbuf[:n])
        del self._rxbuf[:n]
        return out

    def drain(self, quiet: float = 0.05, limit: float = 1.0) -> bytes:
        """Discard input until the line has been quiet for ``quiet`` s (at most ``limit`` s);
        returns what was discarded (resynchronising after an error)."""
        junk = bytearray(self._rxbuf)
        self._rxbuf.clear()
        end = time.monotonic() + limit
        while time.monotonic() < end:
            chunk = self._read_some(quiet)
            if not chunk:
                break
            junk += chunk
        return bytes(junk)

    # ------------------------------------------------------------------ frames
    def transact(self, frame: bytes, timeout: float | None = None, *, check: bool = True):
        """Send one request frame of :mod:`tritium.protocol` and return the reply.

        Parameters
        ----------
        frame : bytes
            An encoded request (``protocol.read_csr(0)``, ``protocol.write_mem(a, d)``...).
        timeout : float, optional
            Seconds to wait for the whole reply (default: the transport's).
        check : bool
            Raise :class:`BridgeError` when the reply's status is not OK.

        Returns
        -------
        tritium.protocol.Response

        Raises
        ------
        TransportTimeout
            No reply, or only part of one, within ``timeout`` (the message says how much came).
        FrameError
            The reply's CRC is wrong, or bytes that are not a reply came first.
        BridgeError
            ``check`` and the bridge answered with an error status.
        TransportClosed
            The port went away.
        """
        from tritium import protocol

        limit = self.timeout if timeout is None else timeout
        self.send(frame)
        parser = protocol.ResponseParser()
        replies = parser.feed(bytes(self._rxbuf))
        self._rxbuf.clear()
        deadline = time.monotonic() + limit
        while not replies:
            left = deadline - time.monotonic()
            if left <= 0:
                part = bytes(parser.buf)
                what = (f"{len(part)} bytes of an incomplete reply ({part[:12].hex()})" if part
                        else "no reply")
                junk = f", {parser.skipped} stray bytes skipped" if parser.skipped else ""
                raise TransportTimeout(
                    f"timed out after {limit:g} s on {self.port!r}: {what}{junk} to "
                    f"{_describe(frame)}; is the bitstream loaded and the baud rate "
                    f"{self.baud} right?",
                    part,
                )
            replies = parser.feed(self._read_some(min(left, 0.05)))
        reply = replies[0]
        # a second reply in the same read belongs to nobody: keep its bytes for the next call
        for extra in replies[1:]:
            self._rxbuf += protocol.encode_response(extra.status, extra.payload)
        self._rxbuf += parser.buf
        if parser.skipped:
            raise FrameError(f"{parser.skipped} stray bytes before the reply to "
                             f"{_describe(frame)} on {self.port!r}")
        if not reply.crc_ok:
            raise FrameError(f"reply to {_describe(frame)} has a bad CRC "
                             f"(status {reply.status}, {len(reply.payload)} payload bytes)")
        if not isinstance(reply.status, protocol.Status):
            raise FrameError(f"reply to {_describe(frame)} has unknown status {reply.status}")
        if check and reply.status != protocol.Status.OK:
            raise BridgeError(f"bridge answered {reply.status.name} to {_describe(frame)}",
                              reply.status)
        return reply

    # ------------------------------------------------------------------ commands
    def ping(self) -> int:
        """PING; returns the ID CSR value the bridge answers with."""
        from tritium import protocol

        return self._u32(self.transact(protocol.ping()), "PING")

    def read_csr(self, offset: int) -> int:
        """The 32-bit CSR at byte ``offset``."""
        from tritium import protocol

        return self._u32(self.transact(protocol.read_csr(offset)), f"READ_CSR {offset:#x}")

    def write_csr(self, offset: int, value: int) -> None:
        from tritium import protocol

        self.transact(protocol.write_csr(offset, value))

    def read_mem(self, addr: int, length: int) -> bytes:
        """``length`` bytes of device memory from ``addr`` (split into protocol-sized reads)."""
        from tritium import protocol

        out = bytearray()
        for a, n in protocol.split_mem(addr, length):
            r = self.transact(protocol.read_mem(a, n))
            if len(r.payload) != n:
                raise FrameError(f"READ_MEM {a:#x}+{n}: reply carries {len(r.payload)} bytes")
            out += r.payload
        return bytes(out)

    def write_mem(self, addr: int, data: bytes) -> None:
        """Write ``data`` to device memory at ``addr`` (split into protocol-sized writes)."""
        from tritium import protocol

        for a, chunk in protocol.split_mem(addr, bytes(data)):
            self.transact(protocol.write_mem(a, chunk))

    def resync(self, attempts: int = 3) -> None:
        """Recover after an error: drop pending input, PING until a clean reply comes."""
        last: Exception | None = None
        for _ in range(attempts):
            self.drain()
            try:
                self.ping()
                return
            except (TransportTimeout, FrameError, BridgeError) as e:
                last = e
        raise TransportError(f"could not resynchronise with the bridge on {self.port!r}: {last}")

    @staticmethod
    def _u32(reply, what: str) -> int:
        if len(reply.payload) != 4:
            raise FrameError(f"{what}: reply carries {len(reply.payload)} bytes, expected 4")
        return int.from_bytes(reply.payload, "little")


class BridgeError(TransportError):
    """The bridge answered a request with an error status (``.status``)."""

    def __init__(self, message: str, status=None):
        super().__init__(message)
        self.status = status


def _describe(frame: bytes) -> str:
    """``READ_MEM 0x100+64`` style name of an encoded request (for messages)."""
    from tritium import protocol

    try:
        r = protocol.decode_request(bytes(frame))
        name = protocol.Cmd(r.cmd).name
    except (ValueError, IndexError):
        return f"a {len(frame)}-byte request"
    return f"{name} {r.addr:#x}+{r.length}"
