"""Frames on the protocol streams: a 4-byte little-endian length, then a msgpack body."""

import os
import struct

import msgpack

HEADER = struct.Struct("<I")
# Workers refuse frames over 64 MiB (htex_protocol::DEFAULT_MAX_FRAME_BYTES) and treat the
# runner as lost, so the runner never sends one.
MAX_FRAME_BYTES = 64 << 20


class TruncatedFrame(Exception):
    """The stream ended inside a frame."""


def pack(value):
    """The msgpack encoding of ``value`` (``bytes`` as bin, ``str`` as str)."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(body):
    """The value ``body`` encodes; raises on malformed or trailing data."""
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


class FrameReader:
    """Reads whole frames from a file descriptor with unbuffered reads."""

    def __init__(self, fd):
        self._file = os.fdopen(fd, "rb", buffering=0, closefd=False)

    def _read_exact(self, n, at_boundary):
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._file.readinto(view[got:])
            if not k:
                if got == 0 and at_boundary:
                    return None
                raise TruncatedFrame(f"stream ended after {got} of {n} bytes")
            got += k
        return bytes(buf)

    def read(self):
        """The next frame's body, or None at a clean end of stream (between frames)."""
        header = self._read_exact(HEADER.size, at_boundary=True)
        if header is None:
            return None
        (length,) = HEADER.unpack(header)
        if length == 0:
            return b""
        return self._read_exact(length, at_boundary=False)


class FrameWriter:
    """Writes whole frames to a file descriptor."""

    def __init__(self, fd):
        self._fd = fd

    def write(self, body):
        """Sends one frame holding ``body`` (bytes)."""
        if len(body) > 0xFFFFFFFF:
            raise ValueError(f"a frame of {len(body)} bytes does not fit a 4-byte length")
        self._write_all(HEADER.pack(len(body)))
        self._write_all(body)

    def _write_all(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def send(self, message):
        """Sends ``message`` msgpack-encoded in one frame."""
        self.write(pack(message))
