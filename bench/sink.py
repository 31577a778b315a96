"""The upload ceiling: a minimal raw HTTP PUT sink.

Reads one request head, answers `100 Continue` when asked, copies exactly Content-Length bytes to a file under
--dir, and answers 200. No framework, no parsing beyond what is needed. Keep-alive is supported so hey can use it.

    python bench/sink.py --port PORT --dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os

CHUNK = 1024 * 1024


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, root: str) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            remaining = int(headers.get("content-length", "0"))
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            fd = os.open(os.path.join(root, "upload.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                while remaining > 0:
                    chunk = await reader.read(min(CHUNK, remaining))
                    if not chunk:
                        return
                    os.write(fd, chunk)
                    remaining -= len(chunk)
            finally:
                os.close(fd)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    server = await asyncio.start_server(lambda r, w: handle(r, w, args.dir), args.host, args.port, limit=CHUNK * 2)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
