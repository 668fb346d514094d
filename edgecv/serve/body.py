"""Read a request body at the ASGI level, bounded in size and time, decoding ``Content-Encoding: gzip/deflate``.

The front door (:class:`edgecv.serve.app.Guard`) reads the whole body before a request is admitted or routed, so
a client that declares a large body and stalls holds no admission slot, and gets 408 at ``--body-timeout-s``.
"""

from __future__ import annotations

import asyncio
import zlib

# Content-Encoding -> zlib wbits (gzip container / zlib container, RFC 9110 8.4.1)
_CODINGS = {"gzip": 16 + 15, "x-gzip": 16 + 15, "deflate": 15}


class BodyError(Exception):
    """The body cannot be taken: ``status`` (400/408/413/415) and one line for the JSON answer; ``body_read``:
    the body was received to its end (the connection can take the next request)."""

    def __init__(self, status: int, msg: str, body_read: bool = False):
        super().__init__(msg)
        self.status, self.body_read = status, body_read


class Disconnected(Exception):
    """The client went away before the body arrived."""

    def __init__(self, received: int):
        super().__init__(received)
        self.received = received


def has_body(headers: dict[bytes, bytes]) -> bool:
    return b"transfer-encoding" in headers or headers.get(b"content-length", b"0").strip() not in (b"0", b"")


def _declared(headers: dict[bytes, bytes], limit: int) -> int | None:
    cl = headers.get(b"content-length")
    if cl is None:
        return None
    try:
        n = int(cl)
    except ValueError:
        raise BodyError(400, f"bad Content-Length {cl.decode(errors='replace')!r}") from None
    if n > limit:
        raise BodyError(413, f"body of {n} bytes exceeds the limit of {limit} (--max-body-mb)")
    return n


def _decoder(headers: dict[bytes, bytes]):
    coding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in _CODINGS:
        raise BodyError(415, f"Content-Encoding {coding!r} is not supported (gzip, deflate or identity)")
    return zlib.decompressobj(_CODINGS[coding])


async def read_body(receive, headers: dict[bytes, bytes], limit: int, deadline: float) -> bytes:
    """The body (decompressed), at most ``limit`` bytes on the wire and after decompression, complete before
    ``deadline`` (loop time). What the headers alone refuse (a declared size over ``limit``, a bad length, an
    unknown coding) is refused before anything is received. Raises :class:`BodyError` or :class:`Disconnected`."""
    _declared(headers, limit)
    dec = _decoder(headers)
    chunks, wire, size = [], 0, 0
    try:
        async with asyncio.timeout_at(deadline):
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise Disconnected(wire)
                data, more = msg.get("body", b""), msg.get("more_body", False)
                wire += len(data)
                if wire > limit:
                    raise BodyError(413, f"body exceeds the limit of {limit} bytes (--max-body-mb)", not more)
                if dec is not None and data:
                    try:
                        data = dec.decompress(data, limit - size + 1)
                    except zlib.error as e:
                        raise BodyError(400, f"body is not valid {_name(headers)} data ({e})", not more) from None
                size += len(data)
                if size > limit:
                    raise BodyError(413, f"decompressed body exceeds the limit of {limit} bytes (--max-body-mb)",
                                    not more)
                chunks.append(data)
    except TimeoutError:
        raise BodyError(408, f"request body not received in time ({wire} bytes by the deadline; "
                             "--body-timeout-s)") from None
    if dec is not None and not dec.eof:
        raise BodyError(400, f"{_name(headers)} body is truncated", body_read=True)
    return b"".join(chunks)


def _name(headers: dict[bytes, bytes]) -> str:
    return headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
