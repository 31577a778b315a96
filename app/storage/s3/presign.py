"""`S3Presigner`: the MultipartUploads and PresignedDownloads capabilities of S3Store. Clients PUT parts straight to
S3 with presigned UploadPart URLs and download with a presigned GetObject URL. URLs are signed by the client's
`signer`, the client for the public endpoint when one is set: SigV4 signs the Host, so a URL signed for an internal
endpoint fails outside.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from app.downloads import content_disposition
from app.errors import (
    AlreadyExists,
    ArtifactNotFound,
    InvalidParameter,
    IsADirectoryArtifact,
    PayloadTooLarge,
    ResourceNotFound,
)
from app.paths import EntryPath
from app.settings import Settings
from app.storage.base import (
    DEFAULT_COMPLETE,
    CompletedPart,
    CompleteOptions,
    CreatedMultipartUpload,
    PartCredential,
    PresignedUrl,
)
from app.storage.s3.client import S3Client


def presign_blocker(extra_args: Mapping[str, object]) -> str | None:
    """Why these upload args rule presigned transfers out, as MLflow 3.18 decides: an SSE-C key would have to travel
    to every client in the part and download headers, and a checksum algorithm needs each part's checksum, which
    the client's plain part PUT does not send. Either way clients must go through us."""
    if "SSECustomerKey" in extra_args or "SSECustomerAlgorithm" in extra_args:
        return "an SSE-C key in MLFLOW_S3_UPLOAD_EXTRA_ARGS would be disclosed to clients in presigned requests"
    if "ChecksumAlgorithm" in extra_args:
        return "ChecksumAlgorithm in MLFLOW_S3_UPLOAD_EXTRA_ARGS needs a checksum on every part clients send"
    return None


def multipart_etag(etags: Sequence[str]) -> str | None:
    """The ETag S3 gives an object completed from these parts: md5 of the parts' binary md5s, then `-<count>`."""
    try:
        digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in etags)
    except ValueError:
        return None
    return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(etags)}"'


class S3Presigner:
    """Presigned multipart uploads (create, complete, abort) and presigned downloads, for one S3Client."""

    def __init__(self, client: S3Client, settings: Settings) -> None:
        # Settings are read per call: URL lifetimes are the live settings' values.
        self._client, self._settings = client, settings

    # presigned multipart -------------------------------------------------------------------------------------------
    async def create_multipart_upload(self, path: EntryPath, num_parts: int) -> CreatedMultipartUpload:
        upload_id = await self._client.create_upload(path)
        try:
            urls = [await self._presign_part(path, upload_id, number) for number in range(1, num_parts + 1)]
        except BaseException:
            await self._client.abort_quietly(path, upload_id)
            raise
        # Signed in, so every part PUT must send them; MLflow's client sends a credential's `headers` verbatim.
        headers = self._client.as_headers("UploadPart", self._client.repeated_args("UploadPart"))
        return CreatedMultipartUpload(upload_id, [PartCredential(url, i, headers) for i, url in enumerate(urls, 1)])

    async def _presign_part(self, path: EntryPath, upload_id: str, number: int) -> str:
        client = self._client
        params = {
            "Bucket": client.bucket,
            "Key": client.key(path),
            "UploadId": upload_id,
            "PartNumber": number,
            **client.repeated_args("UploadPart"),
        }
        with client.errors("presign UploadPart", path):
            url = await client.signer.generate_presigned_url(
                "upload_part", Params=params, ExpiresIn=self._settings.multipart_url_ttl
            )
        return str(url)

    async def complete_multipart_upload(
        self,
        path: EntryPath,
        upload_id: str | None,
        parts: Sequence[CompletedPart],
        options: CompleteOptions = DEFAULT_COMPLETE,
    ) -> None:
        if not upload_id:
            raise InvalidParameter("Missing value for required parameter 'upload_id'")
        if not parts:
            raise InvalidParameter("Missing value for required parameter 'parts'")
        client = self._client
        ordered = sorted(parts, key=lambda part: part.part_number)
        if options.max_size is not None:
            await self._check_uploaded_size(path, upload_id, {part.part_number for part in ordered}, options)
        listed = [{"PartNumber": part.part_number, "ETag": part.etag} for part in ordered]  # ETags verbatim
        condition = {"IfNoneMatch": "*"} if options.create_only else {}  # atomic create-only, settled by S3
        try:
            with client.errors("CompleteMultipartUpload", path):
                await client.sdk.complete_multipart_upload(
                    Bucket=client.bucket,
                    Key=client.key(path),
                    UploadId=upload_id,
                    MultipartUpload={"Parts": listed},
                    **condition,
                    **client.repeated_args("CompleteMultipartUpload"),
                )
        except (ResourceNotFound, AlreadyExists) as exc:
            # A retried complete whose first attempt succeeded: the object is there, built from exactly these
            # parts. Matching the ETag (not mere existence) keeps an upload id bound to its own key.
            if await self._completed_from(path, [p.etag for p in ordered]):
                return
            if isinstance(exc, AlreadyExists):
                await client.abort_quietly(path, upload_id)  # lost to an existing object for good: drop the parts
            raise

    async def _check_uploaded_size(
        self, path: EntryPath, upload_id: str, numbers: set[int], options: CompleteOptions
    ) -> None:
        """Refuse (413) and abort an upload whose listed parts add up to more than the limit, as S3 lists them: the
        parts went straight to S3, so only their sizes there are known."""
        client = self._client
        args = {
            "Bucket": client.bucket,
            "Key": client.key(path),
            "UploadId": upload_id,
            **client.repeated_args("ListParts"),
        }
        total = 0
        while True:
            try:
                with client.errors("ListParts", path):
                    page = await client.sdk.list_parts(**args)
            except ResourceNotFound:
                return  # completed or aborted already: CompleteMultipartUpload tells which
            total += sum(int(part["Size"]) for part in page.get("Parts", []) if part["PartNumber"] in numbers)
            if not page.get("IsTruncated"):
                break
            args["PartNumberMarker"] = page["NextPartNumberMarker"]
        try:
            options.check_size(total)
        except PayloadTooLarge:
            await client.abort_quietly(path, upload_id)
            raise

    async def _completed_from(self, path: EntryPath, etags: Sequence[str]) -> bool:
        try:
            meta = await self._client.head(path)
        except (ArtifactNotFound, IsADirectoryArtifact):
            return False
        expected = multipart_etag(etags)
        return expected is not None and meta.etag == expected

    async def abort_multipart_upload(self, path: EntryPath, upload_id: str | None) -> None:
        await self._client.abort_upload(path, upload_id)  # idempotent, as the protocol asks

    # presigned download --------------------------------------------------------------------------------------------
    async def presign_download(self, path: EntryPath) -> PresignedUrl:
        client = self._client
        meta = await client.head(path)
        repeated = client.repeated_args("GetObject")
        params = {
            "Bucket": client.bucket,
            "Key": client.key(path),
            "ResponseContentDisposition": content_disposition(path.basename),
            # Ranges count stored bytes: an object stored with a Content-Encoding must not be decoded on the way.
            "ResponseContentEncoding": "identity",
            **repeated,
        }
        with client.errors("presign GetObject", path):
            url = await client.signer.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=self._settings.presigned_download_ttl
            )
        return PresignedUrl(str(url), client.as_headers("GetObject", repeated), meta.size)
