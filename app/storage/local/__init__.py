"""The local directory destination: `LocalStore` (store.py) over `LocalFiles` (files.py)."""

from app.storage.local.store import LocalStore

__all__ = ["LocalStore"]
