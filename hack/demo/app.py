#!/usr/bin/env python3
"""The demo's stand-in application: a line echo server on the two loopback ports the
sidecar proxies to. Each reply names the member and the port it came in on, so the
demo output shows which path a message took."""
import asyncio
import sys


async def serve(host: str, port: int, tag: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(f"{tag}: {line.decode(errors='replace').rstrip()}\n".encode())
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


async def main() -> None:
    name, host, cluster_port, client_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    await asyncio.gather(
        serve(host, cluster_port, f"{name} (cluster port)"),
        serve(host, client_port, f"{name} (client port)"),
    )


asyncio.run(main())
