"""`python -m ioband`: the same as the `ioband` command."""

from ioband.cli import main

raise SystemExit(main())
