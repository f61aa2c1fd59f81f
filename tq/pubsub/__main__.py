"""`python -m tq.pubsub`: see `tq.pubsub._cli`."""

from tq.pubsub._cli import main

raise SystemExit(main())
