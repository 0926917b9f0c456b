"""Named places where a fault-injection test kills the process, to show a run resumes from each.

`JXR_KILL_AT=<name>` sends SIGKILL to this process the first time `reached(name)` runs (names:
`data_loaded`, `zero_shot`, `fine_tuned`, `step:<n>`, `checkpoint_write:<step>`,
`write:<file name>`; see where `reached` is called). Unset, as everywhere outside
tests/experiments/test_faults.py, it costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "JXR_KILL_AT"


def reached(name: str) -> None:
  if os.environ.get(ENV) == name:
    os.kill(os.getpid(), signal.SIGKILL)
