"""jxr.train.signals in-process: what a step holds back, and how SIGTERM becomes Terminated.

Each test sets the dispositions it relies on (a shell may start pytest with SIGINT ignored).
"""

import os
import signal

import pytest

from jxr.train import signals


@pytest.fixture
def dispositions():
  """SIGINT as in a terminal (KeyboardInterrupt), SIGTERM default; both restored afterwards."""
  saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  yield
  for s, handler in saved.items():
    signal.signal(s, handler)


@pytest.mark.parametrize(
    "signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, signals.Terminated)]
)
def test_a_step_finishes_before_the_signal_is_raised(dispositions, signum, raised):
  deferred = signals.Deferred()
  finished = []
  with pytest.raises(raised) as caught:
    with deferred():
      os.kill(os.getpid(), signum)  # arrives "inside the step"
      finished.append(True)  # ... which still completes (the state gets assigned)
  assert finished == [True] and type(caught.value) is raised
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_inherited_ignored_sigint_stays_ignored(dispositions):
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  with signals.Deferred()():
    os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_sigterm_raises_terminated_only_inside_the_block(dispositions):
  with pytest.raises(signals.Terminated):
    with signals.terminate_as_exception():
      os.kill(os.getpid(), signal.SIGTERM)
      sum(range(1000))  # the handler raises at the next bytecode
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  assert issubclass(signals.Terminated, KeyboardInterrupt)  # every Ctrl-C path saves on it
