"""The exam store: SQLite with one writer (see database.py), its schema (schema.py) and its queries."""
from .database import SchemaTooNewError, Store, StoreClosedError

__all__ = ["SchemaTooNewError", "Store", "StoreClosedError"]
