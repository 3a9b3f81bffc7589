"""TEMPORARY pass-through stand-in with the final Engine API (replaced by the real engine)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ioband.core.request import DONE, ISSUED, Request


@dataclass(frozen=True)
class BackingInfo:
    display: str
    nr_requests: int | None = 128


class Device:
    def __init__(self, name: str, table: str) -> None:
        self.name = name
        self.table_line = table


class Engine:
    def __init__(self, *, hz: int = 1000, resolver: Callable[[str], BackingInfo | None] | None = None,
                 seed: int = 0) -> None:
        self.hz = hz
        self.devices: dict[str, Device] = {}
        self._issued: list[Request] = []

    def create(self, name: str, table: str, now: int = 0) -> Device:
        dev = self.devices[name] = Device(name, table)
        return dev

    def message(self, name: str, words: str | Sequence[str], now: int = 0) -> None:
        pass

    def remove(self, name: str, now: int = 0) -> None:
        del self.devices[name]

    def table(self, name: str) -> str:
        return self.devices[name].table_line

    def status(self, name: str, fmt: str = "legacy") -> str:
        return "1 -1 0 0 0 0 0 0"

    def submit(self, dev: Device, req: Request, now: int) -> bool:
        req.state = ISSUED
        return True

    def complete(self, req: Request, now: int) -> None:
        req.state = DONE

    def advance(self, now: int) -> None:
        pass

    def next_deadline(self) -> int | None:
        return None

    def take_issued(self) -> list[Request]:
        out, self._issued = self._issued, []
        return out

    def take_admitted(self) -> list[Request]:
        return []
