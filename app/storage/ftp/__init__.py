"""The FTP backend (`ftp://`, `ftps://`): `FTPStore` and its URI parsing; its settings are `settings.ftp`."""

from app.storage.ftp.config import parse_ftp_uri
from app.storage.ftp.store import FTPStore

__all__ = ["FTPStore", "parse_ftp_uri"]
