"""LSP's base protocol (``Content-Length`` frames) read defensively, for stdio and TCP alike.

pygls trusts the header: a ``Content-Length`` of a terabyte is allocated (MemoryError), and one
that is wrong by a byte swallows the next message's header, after which every later message,
``shutdown`` and ``exit`` included, is glued to the previous body and lost. Here a frame is bounded,
and bad framing costs only the bad frame: the reader finds the next header and goes on, saying what
it skipped.

Resynchronising relies on one fact: a raw ``Content-Length: N\\r\\n`` line cannot occur inside a
JSON body (raw line breaks are not allowed in JSON strings, and the words are no JSON token), so
finding one means a new frame starts there.

>>> frames = FrameReader(read_chunk, max_bytes=1 << 20, warn=log.warning)  # doctest: +SKIP
>>> body = await frames.next()  # bytes of one message, or None at end of input
"""

import re
from collections.abc import Awaitable, Callable

HEADER_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 8192
CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")
HEADER_START = re.compile(rb"(?i)content-length:")
# A whole header line as a sender writes it: where this appears, a frame begins.
NEXT_FRAME = re.compile(rb"(?i)content-length:[ \t]*\d+[ \t]*\r\n")
HEADER_LINE = re.compile(rb"[!-9;-~]+:[^\r\n]*")
HEADER_SPAN = 64  # longer than any Content-Length line


class FrameReader:
    """Bodies of LSP frames from ``read`` (which returns b"" at end of input)."""

    def __init__(
        self, read: Callable[[], Awaitable[bytes]], max_bytes: int, warn: Callable[[str], None]
    ) -> None:
        self.read = read
        self.max_bytes = max_bytes
        self.warn = warn
        self.buffer = bytearray()
        self.eof = False
        self.skipped = 0  # bytes dropped while looking for the next header, reported once found

    async def next(self) -> bytes | None:
        """The next frame's body, or None once the input ended."""
        while True:
            header = await self._header()
            if header is None:
                self._report_skipped()
                return None
            end, length = header
            if length is None:
                continue  # a bad header, already skipped
            self._report_skipped()
            body = await self._body(end, length)
            if body is not None:
                return body

    async def _header(self) -> tuple[int, int | None] | None:
        """(end of the header block, its Content-Length or None if the block was skipped)."""
        while True:
            end = self.buffer.find(HEADER_END)
            if end >= 0:
                return end + len(HEADER_END), self._parse_header(bytes(self.buffer[:end]))
            if len(self.buffer) > MAX_HEADER_BYTES:
                self._skip_to_next_header(start=1)
                continue
            if not await self._fill():
                self.skipped += len(self.buffer.strip())
                self.buffer.clear()
                return None

    def _parse_header(self, block: bytes) -> int | None:
        lines = block.split(b"\r\n")
        match = CONTENT_LENGTH.search(block)
        if match is None or not all(HEADER_LINE.fullmatch(line) for line in lines):
            # Garbage before a header: the tail of a body whose Content-Length was too short.
            self._skip_to_next_header(start=1, at_least=len(block) + len(HEADER_END))
            return None
        length = int(match.group(1))
        if length > self.max_bytes:
            del self.buffer[: len(block) + len(HEADER_END)]
            self.warn(
                f"LSP message of {length} bytes is over the limit of {self.max_bytes} "
                "(EDITLOOP_LSP_MAX_MESSAGE_BYTES): skipping it"
            )
            self._skip_to_next_header(start=0)
            return None
        return length

    async def _body(self, start: int, length: int) -> bytes | None:
        """The body after a header ending at ``start``; None when the input ended first."""
        end, scanned = start + length, start
        while True:
            # Only bytes not searched yet (less a header's length, which may straddle two reads).
            window = min(len(self.buffer), end + HEADER_SPAN)
            cut = NEXT_FRAME.search(self.buffer, max(start, scanned - HEADER_SPAN), window)
            if cut is not None and cut.start() < end:  # the declared length was too long
                body = bytes(self.buffer[start : cut.start()])
                del self.buffer[: cut.start()]
                self.warn(
                    f"LSP Content-Length said {length} bytes but the next message began after "
                    f"{len(body)}: took those"
                )
                return body
            if len(self.buffer) >= end:
                body = bytes(self.buffer[start:end])
                del self.buffer[:end]
                return body
            scanned = len(self.buffer)
            if not await self._fill():
                self.warn(f"LSP input ended {end - len(self.buffer)} bytes short of a message")
                self.buffer.clear()
                return None

    def _skip_to_next_header(self, start: int, at_least: int = 0) -> None:
        """Drop everything before the next ``Content-Length:`` (searched from ``start``), and at
        least ``at_least`` bytes when none is in sight."""
        found = HEADER_START.search(self.buffer, start)
        # Without a header in sight keep a few bytes: a header may be split across reads.
        cut = found.start() if found else max(at_least, len(self.buffer) - len(b"content-length:"))
        self.skipped += cut
        del self.buffer[:cut]

    def _report_skipped(self) -> None:
        if self.skipped:
            self.warn(f"LSP framing was broken: skipped {self.skipped} bytes to the next message")
            self.skipped = 0

    async def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = await self.read()
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True
