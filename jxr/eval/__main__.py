"""`python -m jxr.eval`; see `jxr.eval.cli`."""

import sys

from jxr.eval.cli import main

sys.exit(main())
