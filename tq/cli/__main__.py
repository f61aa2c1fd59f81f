"""`python -m tq.cli`: the `tq` command."""

import sys

from tq.cli import main

sys.exit(main())
