"""The FTP backend (`ftp://`, `ftps://`): `FTPStore`, and the settings and URI parsing it is configured by."""

from app.storage.ftp.config import FTPConfig, parse_ftp_uri
from app.storage.ftp.store import FTPStore

__all__ = ["FTPConfig", "FTPStore", "parse_ftp_uri"]
