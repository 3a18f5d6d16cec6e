"""`python -m runtime.cli` is `rtdiff`."""

from runtime.cli import main

raise SystemExit(main())
