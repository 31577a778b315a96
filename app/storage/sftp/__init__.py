"""The SFTP backend (`sftp://`): `SFTPStore`, and the settings and URI parsing it is configured by."""

from app.storage.sftp.config import SFTPConfig, parse_sftp_uri
from app.storage.sftp.store import SFTPStore

__all__ = ["SFTPConfig", "SFTPStore", "parse_sftp_uri"]
