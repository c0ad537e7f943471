"""A Unix-socket proxy in front of the real Docker engine that turns one real event into a
storm: the first ``die`` of a named container on an ``/events`` stream is passed on ``copies``
times, spread over ``spread`` seconds (the engine cannot produce 1,000 deaths of one
container in a few seconds: each restart takes a few hundred milliseconds). Every other
request and event goes through unchanged, to the real engine, one request per connection.
``outage()`` plays an engine restart: open connections are cut and new ones closed at once
until ``recover()``.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from typing import Any

ENGINE = "/var/run/docker.sock"
HEAD_LIMIT = 64 * 1024


class StormProxy:
    def __init__(self, container: str, copies: int = 1000, spread: float = 2.0) -> None:
        self.container, self.copies, self.spread = container, copies, spread
        self.dir = tempfile.mkdtemp(prefix="rem-storm-")
        self.path = os.path.join(self.dir, "docker.sock")
        self.sent = 0
        """Copies of the die event passed on so far."""
        self.stormed = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: Any = None
        self._used = False
        self._down = False
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> StormProxy:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_unix_server(self._handle, path=self.path), self.loop
        )
        self._server = future.result(10)
        return self

    def stop(self) -> None:
        async def shut() -> None:
            self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # open streams: the watcher's events, mid-read
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass

    def outage(self) -> None:
        """Cut every open connection (the watcher's event stream among them) and refuse new
        ones, as an engine that went away does."""

        def cut() -> None:
            self._down = True
            for w in list(self._open):
                w.transport.abort()

        self.loop.call_soon_threadsafe(cut)

    def recover(self) -> None:
        def up() -> None:
            self._down = False

        self.loop.call_soon_threadsafe(up)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            writer.transport.abort()
            return
        self._open.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > HEAD_LIMIT:
                return
            lines = head.decode("latin-1").split("\r\n")
            length = 0
            kept = [lines[0]]
            for line in lines[1:]:
                name = line.split(":", 1)[0].strip().lower()
                if name == "content-length":
                    length = int(line.split(":", 1)[1])
                if name == "connection" or not line:
                    continue
                kept.append(line)
            body = await reader.readexactly(length) if length else b""
            up_reader, up_writer = await asyncio.open_unix_connection(ENGINE)
            up_writer.write(("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode())
            up_writer.write(body)
            await up_writer.drain()
            path = lines[0].split(" ")[1] if " " in lines[0] else ""
            if "/events" in path.split("?")[0]:
                await self._events(up_reader, writer)
            else:
                while chunk := await up_reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
            up_writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _events(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pass the response head on, then the chunked body chunk by chunk, the first die of
        the container as a storm."""
        writer.write(await up.readuntil(b"\r\n\r\n"))
        await writer.drain()
        while True:
            size_line = await up.readuntil(b"\r\n")
            size = int(size_line.strip().split(b";")[0], 16)
            data = await up.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                writer.write(size_line + data)
                await writer.drain()
                return
            if not self._used and self._is_die(data[:-2]):
                self._used = True
                gap = self.spread / self.copies
                for _ in range(self.copies):
                    writer.write(size_line + data)
                    await writer.drain()
                    self.sent += 1
                    await asyncio.sleep(gap)
                self.stormed.set()
                continue
            writer.write(size_line + data)
            await writer.drain()

    def _is_die(self, payload: bytes) -> bool:
        try:
            event = json.loads(payload)
        except ValueError:
            return False
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        return bool(event.get("Action") == "die" and attrs.get("name") == self.container)
