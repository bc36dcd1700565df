"""Time-ordered task ids: UUIDv7 (RFC 9562) strings, monotonic within one generator.

Layout: 48-bit Unix milliseconds, version 7, 12 + 14 random bits fixed per generator, then a
48-bit counter that starts at a random value (RFC 9562 section 6.2 allows a counter). Ids from
one generator sort in creation order; generators differ in their 74 random starting bits. The
generator is pure: the caller passes the time and the seed. The text before the counter only
changes once per millisecond, so it is cached.
"""

from __future__ import annotations

__all__ = ["IdGenerator", "uuid7_time_ms"]

_MASK48 = (1 << 48) - 1


class IdGenerator:
    def __init__(self, seed: int):
        self._rand_a = (seed >> 62) & 0xFFF  # 12 bits
        self._rand_b_hi = (seed >> 48) & 0x3FFF  # 14 bits
        self._ctr = seed & _MASK48
        self._ms = -1
        self._prefix = ""

    def next(self, now_ns: int) -> str:
        ms = now_ns // 1_000_000
        if ms != self._ms:
            if ms < self._ms:  # the clock went back: stay monotonic
                ms = self._ms
            else:
                self._set_prefix(ms)
        self._ctr = ctr = (self._ctr + 1) & _MASK48
        if not ctr:  # the counter wrapped: move on to the next millisecond
            self._set_prefix(self._ms + 1)
        return f"{self._prefix}{ctr:012x}"

    def _set_prefix(self, ms: int) -> None:
        self._ms = ms
        h = f"{ms:012x}"
        self._prefix = f"{h[:8]}-{h[8:]}-7{self._rand_a:03x}-{0x8000 | self._rand_b_hi:04x}-"


def uuid7_time_ms(task_id: str) -> int | None:
    """The millisecond timestamp of a UUIDv7 id, or None for other ids."""
    if len(task_id) != 36 or task_id[14] != "7":
        return None
    try:
        return int(task_id[:8] + task_id[9:13], 16)
    except ValueError:
        return None
