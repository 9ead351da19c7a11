"""`python -m dtq.cli`: the `dtq` command (the supervisor starts nodes this way)."""

from dtq.cli.main import main

raise SystemExit(main())
