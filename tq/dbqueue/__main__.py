"""`python -m tq.dbqueue`: see `tq.dbqueue._cli`."""

from tq.dbqueue._cli import main

raise SystemExit(main())
