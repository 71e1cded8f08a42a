"""`python -m dbwatch` runs the CLI."""

from dbwatch.cli import main

raise SystemExit(main())
