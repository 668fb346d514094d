"""uvicorn's HTTP protocol (httptools) with the connection limits of ``edgecv serve``.

uvicorn closes a keep-alive connection only after an answer and after ``timeout_keep_alive``: a connection that
never sends a byte, or sends its headers one byte every few seconds, stays open forever, and its concurrency
limit (``limit_concurrency``) counts such connections, so a flood of idle sockets made every request a 503. Here:

* a connection that sends nothing is closed after ``keep_alive_s``, from its opening as after each answer;
* the headers of a request must be complete ``header_timeout_s`` after its first byte (also bytes that follow an
  answer, such as the unread rest of a refused body): 408 JSON, then the connection is closed;
* at ``max_connections`` open connections, a new one closes the connection that has been idle (not in a
  request) the longest, so idle sockets can never lock a working client out; only when every connection is in a
  request is the new one closed. uvicorn's ``limit_concurrency`` is not used;
* a request httptools cannot parse (a bad ``Content-Length``, ``Content-Length`` with ``Transfer-Encoding``)
  gets a JSON 400 naming the reason instead of uvicorn's plain text, and the connection is closed (the byte
  stream cannot be resynchronised).

The body's own deadline and size are the app's (:mod:`edgecv.serve.body`).
"""

from __future__ import annotations

import collections
import json
import sys

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


def raw_json(status: int, msg: str, default_headers=()) -> bytes:
    """A complete HTTP/1.1 answer with ``{"error": msg}`` that closes the connection."""
    body = json.dumps({"error": msg}).encode()
    head = [STATUS_LINE[status], *(b"%s: %s\r\n" % (k, v) for k, v in default_headers),
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)]
    return b"".join(head) + body


def protocol_class(header_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``; the idle timeout is uvicorn's ``timeout_keep_alive``."""
    idle: collections.OrderedDict = collections.OrderedDict()  # connections not in a request, longest idle first

    class EdgecvProtocol(HttpToolsProtocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            idle[self] = None
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)
            if len(self.connections) > max_connections:
                victim = next((c for c in idle if c is not self), self)
                idle.pop(victim, None)
                victim.transport.close()

        def connection_lost(self, exc) -> None:
            idle.pop(self, None)
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._cancel_header_timer()
            idle.pop(self, None)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._between_requests():
                idle.pop(self, None)
                idle[self] = None  # the newest idle one

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and self._between_requests():
                self.transport.write(raw_json(408, f"request headers not received in time ({header_timeout_s:g} s;"
                                                   " --header-timeout-s)", self.server_state.default_headers))
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            err = sys.exc_info()[1]  # called by uvicorn inside its `except httptools.HttpParserError`
            why = f"{msg.rstrip('.')}: {err}" if err is not None and str(err) else msg
            self.transport.write(raw_json(400, f"malformed HTTP request ({why})", self.server_state.default_headers))
            self.transport.close()

    return EdgecvProtocol
