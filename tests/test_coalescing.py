"""The transport under uvicorn holds small writes to the end of the loop's step, and nothing else changes."""

from __future__ import annotations

import asyncio
from typing import Any

from app.coalescing import HOLD_LIMIT, CoalescingTransport


class Recording(asyncio.Transport):
    """What reaches the socket: one entry per system call the real transport would make."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.sends.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.sends.append(b"".join(list_of_data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True


async def next_step() -> None:
    await asyncio.sleep(0)  # one turn of the loop: what call_soon scheduled has run


async def test_a_head_and_a_small_body_leave_in_one_send() -> None:
    real = Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
    transport.write(b"hello")
    assert real.sends == []  # held until the step ends
    await next_step()
    assert real.sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
    transport.write(b"next")
    await next_step()
    assert real.sends[1:] == [b"next"]


async def test_a_large_write_goes_at_once_with_what_is_held() -> None:
    real = Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"head")
    big = b"x" * HOLD_LIMIT
    transport.write(big)
    assert real.sends == [b"head" + big]  # nothing waits for the step: flow control sees the bytes now
    await next_step()
    assert len(real.sends) == 1  # and the scheduled flush finds nothing more


async def test_close_sends_what_is_held_first_and_the_rest_passes_through() -> None:
    real = Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"last words")
    transport.close()
    assert real.sends == [b"last words"] and real.closed
    transport.write(b"after close")
    await next_step()
    assert real.sends == [b"last words"]  # a closed connection takes nothing more
    transport.pause_reading()
    assert real.paused and transport.is_closing()
