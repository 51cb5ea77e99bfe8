"""Allow ``python -m bench`` (``--quick`` for the short CI version)."""

from bench.run import main

raise SystemExit(main())
