"""Stopping a run cleanly: Ctrl-C (SIGINT) and preemption (SIGTERM) end in a checkpoint.

SIGTERM is what Slurm, Kubernetes and Cloud TPU send before they stop a job.
`terminate_as_exception` turns it into `Terminated`, a `KeyboardInterrupt`, so the
code that saves on Ctrl-C saves on preemption too; `deferred` holds both signals
back while a training step runs (the step donates the old state, so an interrupt
between the call and the assignment would lose both). A SIGINT the process
inherited as ignored (`nohup`, background jobs) stays ignored.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
  """SIGTERM arrived: stop as after Ctrl-C (save, then exit 143)."""


def _raise_terminated(signum, frame):
  raise Terminated()


def _main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
  """Within the block SIGTERM raises `Terminated` (main thread only; restored after)."""
  if not _main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


class Deferred:
  """`with deferred():` holds SIGINT and SIGTERM until the block ends, then raises."""

  def __init__(self):
    self.pending: type[KeyboardInterrupt] | None = None

  @contextlib.contextmanager
  def __call__(self) -> Iterator[None]:
    if not _main_thread():
      yield
      return

    def hold(signum, frame):
      self.pending = Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    held = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
      held.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, hold) for signum in held}
    try:
      yield
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, handler)
    if self.pending is not None:
      pending, self.pending = self.pending, None
      raise pending()
