"""Files the server re-reads when they change: mounted Secrets and ConfigMaps.

kubelet updates a mounted Secret atomically: it writes the new files into a fresh directory and swaps
the ``..data`` symlink the file names point through, so a file's (device, inode, size, mtime) seen
through ``stat`` (which follows symlinks) changes at once for all its files; cert-manager and
operators replacing a file in place change its mtime. Checking that signature at most once a second
costs a ``stat`` per file per second, and a change is acted on within a second of being seen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
CHECK_INTERVAL_S = 1.0

Signature = tuple[tuple[int, int, int, int], ...]


def signature(paths: tuple[str, ...]) -> Signature:
    """What identifies the current content of ``paths`` (OSError when one cannot be read)."""
    found = []
    for path in paths:
        stat = os.stat(path)
        found.append((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


class Reloading(Generic[T]):
    """A value built from files, built again when they change. The first build's error propagates (the
    server refuses to start on a bad file); a later bad version keeps the last good value and is reported
    to ``on_error`` once per version, so a half-written update never takes serving down."""

    def __init__(
        self,
        paths: tuple[str, ...],
        build: Callable[[], T],
        on_change: Callable[[T], None] = lambda value: None,
        on_error: Callable[[Exception], None] = lambda exc: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = paths
        self._build = build
        self._on_change = on_change
        self._on_error = on_error
        self._clock = clock
        self.value = build()  # its own error names the file (ConfigError) when one cannot be read or used
        self._seen = signature(paths)
        self._checked = clock()
        self._failed: Signature | str | None = None  # the version last reported bad ("unreadable": none)

    def current(self) -> T:
        """The value for the files as they are now (looked at again at most once a second)."""
        now = self._clock()
        if now - self._checked >= CHECK_INTERVAL_S:
            self._checked = now
            self.refresh()
        return self.value

    def refresh(self) -> bool:
        """Rebuild when the files changed since the last good build; whether the value changed."""
        try:
            seen = signature(self.paths)
        except OSError as exc:
            self._report("unreadable", exc)
            return False
        if seen == self._seen or seen == self._failed:
            return False
        try:
            value = self._build()
        except Exception as exc:
            self._report(seen, exc)
            return False
        self.value, self._seen, self._failed = value, seen, None
        self._on_change(value)
        return True

    def _report(self, seen: Signature | str, exc: Exception) -> None:
        if seen != self._failed:
            self._failed = seen
            self._on_error(exc)
