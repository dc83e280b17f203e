"""Progress that reaches the user wherever the work runs.

On a terminal it is the tqdm bar; anywhere else (``nohup``, ``sbatch``, ``| tee``, a Prefect flow run, CI) a bar
prints nothing useful, so it becomes plain lines on the ``dapl.progress`` logger, paced so a long job's log stays
short: a line when at least :data:`MIN_INTERVAL_S` seconds *and* :data:`MIN_SHARE` of the total have passed since
the previous one (the rarer of the two), plus a final line. Each line says done/total, rate and ETA.

A :class:`Progress` given ``ahead`` (a description of the work, e.g. ``"4,357 images × 1 view"``) also says once,
early, how long that work will take at the rate measured so far.

The clock is injectable, so tests drive the pacing without sleeping. Progress only counts: it never touches
an RNG or the order of any computation.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

LOG = logging.getLogger("dapl.progress")
MODES = ("auto", "bar", "log", "off")
MIN_INTERVAL_S = 30.0  # at most one line per 30 s ...
MIN_SHARE = 0.10  # ... and per 10 % of the total, whichever is rarer
ESTIMATE_AFTER_S = 5.0  # the estimate line: once this long after the first update (warm-up excluded) ...
ESTIMATE_AFTER_SHARE = 0.05  # ... or this share of the work after it, whichever comes first

T = TypeVar("T")


def resolve_mode(mode: str | bool, stream=None) -> str:
    """``auto`` -> ``bar`` on a terminal, else ``log``; ``True``/``False`` (the old ``progress`` flag) mean
    ``auto``/``off``."""
    if mode is True:
        mode = "auto"
    elif mode is False:
        mode = "off"
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 10 min``: readable in a log line."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_rate(rate: float, unit: str) -> str:
    """Three significant figures or so: ``6.1 img/s``, ``312 it/s``, ``0.042 it/s``."""
    if rate >= 100:
        text = f"{rate:,.0f}"
    elif rate >= 1:
        text = f"{rate:.1f}"
    else:
        text = f"{rate:.2g}"
    return f"{text} {unit}/s"


class Progress:
    """Counts work done (``update(n)``) and shows it as a bar or as paced log lines (see the module docstring).

    ``initial``: work already done before this process (a resumed run); the rate counts only what this
    process does. Use as a context manager, or call :meth:`close` (which writes the final line).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0,
                 mode: str | bool = "auto", ahead: str | None = None, leave: bool = True,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = LOG):
        self.total, self.desc, self.unit = total, desc, unit
        self.mode = resolve_mode(mode)
        self.ahead = ahead
        self.clock, self.log = clock, logger
        self.n = self.initial = self._last_n = initial
        self.t0 = self._last_t = clock()
        self._first: tuple[float, int] | None = None  # (time, n) of the first update: the estimate's start
        self._estimated = ahead is None
        self._postfix = ""
        self._closed = False
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=sys.stderr)

    # counting -----------------------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.n += n
        if self.mode == "off":
            return
        now = self.clock()
        if self._first is None:
            self._first = (now, self.n)
        elif not self._estimated:
            self._maybe_estimate(now)
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and self._due(now):  # at the end the final line speaks instead
            self._last_t, self._last_n = now, self.n
            self.log.info("%s", self.line(now))

    def set_postfix(self, **values: object) -> None:
        """``key=value`` pairs shown after the bar, or at the end of each log line (e.g. a training loss)."""
        self._postfix = " ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values)

    def close(self, stopped: bool = False) -> None:
        """Close the bar, or write the final line (``stopped``: the work ended early, by an error)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and self.n > self.initial:
            self.log.info("%s", self.final_line(self.clock(), stopped))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(stopped=exc_type is not None)

    # what is shown ------------------------------------------------------------------------------------
    def _due(self, now: float) -> bool:
        """The rarer of the two paces: 30 s and 10 % of the total since the previous line (not at the end:
        the final line follows)."""
        if now - self._last_t < MIN_INTERVAL_S or (self.total and self.n >= self.total):
            return False
        return not self.total or self.n - self._last_n >= MIN_SHARE * self.total

    def rate(self, now: float) -> float:
        """Units per second done by this process so far (0 before any time has passed)."""
        dt = now - self.t0
        return (self.n - self.initial) / dt if dt > 0 else 0.0

    def _count(self) -> str:
        if not self.total:
            return f"{self.n:,} {self.unit}"
        return f"{self.n:,}/{self.total:,} {self.unit} ({100 * self.n / self.total:.0f} %)"

    def _tail(self) -> str:
        return f", {self._postfix}" if self._postfix else ""

    def line(self, now: float) -> str:
        """``desc: 1,200/3,000 it (40 %), 4.1 it/s, ETA 7 min 20 s``."""
        rate = self.rate(now)
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {format_duration(max(0, self.total - self.n) / rate)}"
        return f"{self.desc}: {self._count()}, {format_rate(rate, self.unit)}{eta}{self._tail()}"

    def final_line(self, now: float, stopped: bool = False) -> str:
        """``desc: done 3,000/3,000 it in 12 min 10 s (4.1 it/s)`` (``stopped at`` when it ended early)."""
        word = "stopped at" if stopped else "done"
        return (f"{self.desc}: {word} {self._count()} in {format_duration(now - self.t0)} "
                f"({format_rate(self.rate(now), self.unit)}){self._tail()}")

    def _maybe_estimate(self, now: float) -> None:
        """Once, early: the work ahead and how long it takes at the rate measured since the first update."""
        t1, n1 = self._first
        dt, dn = now - t1, self.n - n1
        share = dn / self.total if self.total else 0.0
        if dn <= 0 or dt <= 0 or (dt < ESTIMATE_AFTER_S and share < ESTIMATE_AFTER_SHARE):
            return
        self._estimated = True
        if self.total and self.n >= self.total:
            return  # already finished: the final line says it all
        rate = dn / dt
        left = f", ~{format_duration((self.total - self.initial) / rate)}" if self.total else ""
        text = f"{self.desc}: {self.ahead} ahead{left} at {format_rate(rate, self.unit)}"
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            self.log.info("%s", text)


def track(iterable: Iterable[T], desc: str, unit: str = "it", *, total: int | None = None,
          mode: str | bool = "auto", **kw) -> Iterator[T]:
    """Iterate ``iterable`` counting one unit per item (``total`` defaults to ``len(iterable)`` when it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, mode=mode, **kw) as p:
        for item in iterable:
            yield item
            p.update(1)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (tests and tools swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _NoTraceback(logging.Formatter):
    """Plain ``message`` lines: a user sees what happened, not a traceback."""

    def formatException(self, ei) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def console_logging(name: str = "dapl") -> None:
    """Show ``name``'s INFO lines (progress among them) on stderr, unless logging is already configured.

    The lines stop there: a library that later calls ``logging.basicConfig`` (module-level ``logging.info``
    does) must not print each of them a second time."""
    logger = logging.getLogger(name)
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(_NoTraceback())
    logger.addHandler(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
