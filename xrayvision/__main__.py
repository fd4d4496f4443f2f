"""`python -m xrayvision`: the same as the `xrayvision` command."""
from .cli import main

raise SystemExit(main())
