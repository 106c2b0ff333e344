"""``python -m minivolo``: see minivolo/cli.py."""
from .cli import main

raise SystemExit(main())
