"""The ceiling for bench/ingest.py: the service's own HTTP server, accepting and discarding.

``POST /telemetry`` and ``POST /telemetry/batch`` answer 202 without decoding the body;
``GET /health`` answers 200. Same server stack as ``orbitstream serve`` (``HttpServer`` on
``asyncio.Protocol`` + httptools, uvloop), nothing behind it: no JSON decode, no
validation, no pipeline, no store. ::

    python bench/ceiling_server.py --port 8082
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

from orbitstream.sources.http.server import HttpServer, Request, Response, Router

_ACCEPTED = b'{"status":"accepted"}'


def accept(request: Request) -> Response:
    return Response(202, _ACCEPTED)


def health(request: Request) -> Response:
    return Response(200, b'{"status":"healthy"}')


async def serve(host: str, port: int) -> None:
    router = Router()
    router.add("POST", "/telemetry", accept)
    router.add("POST", "/telemetry/batch", accept)
    router.add("GET", "/health", health)
    server = HttpServer(router)
    await server.start(host, port)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
