"""Where the static files and templates are: beside the package in a checkout (or an editable install), or under
the installation prefix, where `pip install .` puts them (setup.cfg data_files)."""
from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def folder(name: str) -> Path:
    """`static` or `templates`."""
    for base in (_CHECKOUT, Path(sys.prefix) / "share" / "xrayvision"):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name}/ folder is not installed (looked beside the package and under {sys.prefix})")
