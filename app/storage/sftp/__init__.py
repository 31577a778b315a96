"""The SFTP backend (`sftp://`): `SFTPStore` and its URI parsing; its settings are `settings.sftp`."""

from app.storage.sftp.config import parse_sftp_uri
from app.storage.sftp.store import SFTPStore

__all__ = ["SFTPStore", "parse_sftp_uri"]
