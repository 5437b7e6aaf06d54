"""The floor: one process, uvloop + httptools + orjson OIP echo (`python -m loadtests.bench.floor PORT`)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

import httptools
import orjson
import uvloop

_READY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


def echo(body: bytes, header_len: int | None, model: bytes) -> tuple[bytes, bytes, int | None]:
    """Inputs back as outputs; the binary extension is echoed as binary. Returns (json, raw, header len)."""
    if header_len is None:
        req: dict[str, Any] = orjson.loads(body)
        outs = [
            {"name": f"output-{i}", "datatype": t["datatype"], "shape": t["shape"], "data": t["data"]}
            for i, t in enumerate(req["inputs"])
        ]
        return orjson.dumps({"model_name": model.decode(), "outputs": outs}), b"", None
    req = orjson.loads(body[:header_len])
    raw = body[header_len:]
    outs = []
    for i, t in enumerate(req["inputs"]):
        size = t.get("parameters", {}).get("binary_data_size", 0)
        outs.append(
            {
                "name": f"output-{i}",
                "datatype": t["datatype"],
                "shape": t["shape"],
                "parameters": {"binary_data_size": size},
            }
        )
    head = orjson.dumps({"model_name": model.decode(), "outputs": outs})
    return head, raw, len(head)


class EchoProtocol(asyncio.Protocol):
    """One connection: httptools parser callbacks collect the request, on_message_complete answers it."""

    __slots__ = ("_body", "_headers", "_parser", "_transport", "_url")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is duck-typed

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._headers = {}

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        url = self._url
        if self._parser.get_method() == b"GET":
            transport.write(_READY if url.startswith(b"/v2") else _NOT_FOUND)
        elif url.startswith(b"/v2/models/") and url.endswith(b"/infer"):
            model = url[len(b"/v2/models/") : -len(b"/infer")].split(b"/")[0]
            hlen = self._headers.get(b"inference-header-content-length")
            try:
                head, raw, out_hlen = echo(b"".join(self._body), int(hlen) if hlen else None, model)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                msg = orjson.dumps({"error": str(exc)})
                transport.write(_BAD % len(msg) + msg)
            else:
                if out_hlen is None:
                    transport.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(head), head)
                    )
                else:
                    transport.writelines(
                        [
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                            b"inference-header-content-length: %d\r\ncontent-length: %d\r\n\r\n"
                            % (out_hlen, len(head) + len(raw)),
                            head,
                            raw,
                        ]
                    )
        else:
            transport.write(_NOT_FOUND)
        if not self._parser.should_keep_alive():
            transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
