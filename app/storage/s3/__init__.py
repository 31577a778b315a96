"""S3 and S3-compatible backend (aiobotocore): `S3Store` serves `s3://bucket/prefix`, configured by `settings.s3`."""

from app.storage.s3.store import S3Store

__all__ = ["S3Store"]
