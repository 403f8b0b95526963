"""What a person sees while a job runs: a line per stage, a line per training epoch, and a progress line
while the teacher labels; everything else (Ray's, vLLM's and DeepSpeed's own logs, warnings, worker
output) goes to the run's log file, whose path is printed first. SMALLSEC_VERBOSE=1 shows it all.

Workers (Ray Train ranks, teacher replicas) send their lines to the driver through a relay, a Ray
queue actor (`ray.util.queue.Queue`); a thread in the driver prints them. Library functions called
outside a job (from a user's own Ray program) have no relay, and `post` logs through `logging` instead.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

LOG_FILE = "job.log"
PROGRESS_EVERY_S = 10.0  # a progress line this often when the output is not a terminal (logs, Ray jobs)


def verbose() -> bool:
    return os.environ.get("SMALLSEC_VERBOSE") == "1"


class Console:
    """Lines for a person, on the stream the job started with (a terminal, a pipe, a job log)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._lock = threading.Lock()
        self._pending = False  # a progress line without its newline yet (terminal only)
        self._tracker: Tracker | None = None

    def line(self, text: str) -> None:
        with self._lock:
            if self._pending:
                self.stream.write("\n")
                self._pending = False
            self.stream.write(text + "\n")
            self.stream.flush()

    def progress(self, text: str) -> None:
        """On a terminal: rewritten in place. Elsewhere a plain line (the caller throttles it)."""
        if not self.tty:
            self.line(text)
            return
        with self._lock:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._pending = True

    def handle(self, message: tuple[str, Any]) -> None:
        """A message a worker posted: ("line", text) or ("rows", count) for the progress tracker."""
        kind, value = message
        if kind == "line":
            self.line(str(value))
        elif kind == "rows" and self._tracker is not None:
            self._tracker.add(int(value))

    @contextmanager
    def track(self, what: str, total_rows: int, total_shards: int) -> Iterator[Tracker]:
        """Shows `what`'s progress while the block runs: rows and shards done, rows/s, ETA."""
        tracker = Tracker(self, what, total_rows, total_shards)
        self._tracker = tracker
        try:
            yield tracker
        finally:
            self._tracker = None
            tracker.show(final=True)


class Tracker:
    """Rows and shards done of a labelling run; the rate counts from the first rows (engine start-up
    is not labelling)."""

    def __init__(self, console: Console, what: str, total_rows: int, total_shards: int) -> None:
        self.console, self.what = console, what
        self.total_rows, self.total_shards = total_rows, total_shards
        self.rows = self.shards = 0
        self.first: tuple[float, int] | None = None  # (time, rows) of the first report
        self.shown = time.monotonic()

    def add(self, rows: int) -> None:
        self.rows += rows
        if self.first is None:
            self.first = (time.monotonic(), self.rows)
            self.show()
            return
        every = 1.0 if self.console.tty else PROGRESS_EVERY_S
        if time.monotonic() - self.shown >= every:
            self.show()

    def shard_done(self) -> None:
        self.shards += 1

    def show(self, final: bool = False) -> None:
        self.shown = time.monotonic()
        if final and not self.console.tty:
            return  # the stage's own done line follows
        text = (f"    {self.what}: {self.shards}/{self.total_shards} shards, {self.rows:,}/{self.total_rows:,} rows")
        if self.first is not None and self.shown - self.first[0] > 1.0:
            rate = (self.rows - self.first[1]) / (self.shown - self.first[0])
            eta = f"ETA {(self.total_rows - self.rows) / rate:,.0f}s" if rate > 0 else "ETA n/a"
            shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"  # generation: a few pages a minute
            text += f", {shown} rows/s, {eta}"
        self.console.progress(text)


_active: list[tuple[Console, Any]] = []  # (console, relay) of the job running in this process


def current() -> Console | None:
    return _active[-1][0] if _active else None


def relay() -> Any:
    """The relay workers post to (pass it to them), or None outside a job."""
    return _active[-1][1] if _active else None


def post(relay_handle: Any, text: str) -> None:
    """From a worker: a line for the job's console (or the log when there is no job)."""
    if relay_handle is None:
        log.info(text)
        return
    relay_handle.put_nowait(("line", text))


def post_rows(relay_handle: Any, rows: int) -> None:
    """From a teacher replica: `rows` more rows labelled."""
    if relay_handle is not None:
        relay_handle.put_nowait(("rows", rows))


def say(text: str) -> None:
    """From the driver: a line on the job's console, or the log outside a job."""
    console = current()
    if console is None:
        log.info(text)
    else:
        console.line(text)


@contextmanager
def job_console(run_dir: Path) -> Iterator[Console]:
    """The console of one job. Unless SMALLSEC_VERBOSE=1, this process's stdout and stderr (file
    descriptors 1 and 2, so native code's output too) go to run_dir/job.log until the job ends, and the
    console writes to the stream the job started with."""
    if verbose():
        yield Console(sys.stdout)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    stream, own_stream = _console_stream()
    saved = os.dup(1), os.dup(2)
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        out = Console(stream)
        try:
            yield out
        except BaseException:
            out.line(f"the job stopped; its full log: {run_dir / LOG_FILE}")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if own_stream:
                stream.close()


def _console_stream() -> tuple[IO[str], bool]:
    """The stream for the console: sys.stdout itself when it is not file descriptor 1 (a test capture),
    else a copy of descriptor 1 taken before it is redirected."""
    try:
        is_fd1 = sys.stdout.fileno() == 1
    except (OSError, ValueError, AttributeError):
        is_fd1 = False
    if not is_fd1:
        return sys.stdout, False
    return os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace"), True


@contextmanager
def relaying(console: Console) -> Iterator[None]:
    """Starts the relay actor (Ray must be up) and a thread that hands its messages to `console`."""
    import ray
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node: an actor that reserves nothing keeps no node busy, and an autoscaler would take the
    # node it ran on away as idle, the relay with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    stop = threading.Event()

    def pump() -> None:
        while True:
            try:
                console.handle(queue.get(timeout=0.5))
                for message in queue.get_nowait_batch(queue.qsize()):
                    console.handle(message)
            except Empty:
                if stop.is_set():
                    return
            except Exception:  # the actor is gone (Ray shut down): nothing more will come
                return

    thread = threading.Thread(target=pump, name="smallsec-console", daemon=True)
    thread.start()
    _active.append((console, queue))
    try:
        yield
    finally:
        _active.pop()
        stop.set()
        thread.join(timeout=5)
        queue.shutdown()
