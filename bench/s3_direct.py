"""The S3 baseline: aiobotocore talking to the S3 server directly (no proxy), timed like curl against the proxy.

    python bench/s3_direct.py upload|download|put-small FILE BUCKET KEY

Uploads use multipart with 8 MiB parts, up to 4 in flight (boto3's TransferManager uses 8 MiB parts too);
downloads stream one GET in 1 MiB reads and discard the bytes. Prints one JSON line: {"seconds": ..., "bytes": ...}.
Needs MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from aiobotocore.session import get_session

PART = 8 * 1024 * 1024
IN_FLIGHT = 4


def client(session):  # type: ignore[no-untyped-def]
    return session.create_client(
        "s3",
        endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )


async def upload(s3, path: str, bucket: str, key: str) -> int:  # type: ignore[no-untyped-def]
    size = os.path.getsize(path)
    mpu = await s3.create_multipart_upload(Bucket=bucket, Key=key)
    upload_id = mpu["UploadId"]
    sem = asyncio.Semaphore(IN_FLIGHT)
    fd = os.open(path, os.O_RDONLY)

    async def part(number: int, offset: int) -> dict[str, object]:
        async with sem:
            body = await asyncio.to_thread(os.pread, fd, PART, offset)
            resp = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
            return {"PartNumber": number, "ETag": resp["ETag"]}

    try:
        parts = await asyncio.gather(*(part(i + 1, off) for i, off in enumerate(range(0, size, PART))))
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": list(parts)}
        )
    except BaseException:
        await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    finally:
        os.close(fd)
    return size


async def download(s3, bucket: str, key: str) -> int:  # type: ignore[no-untyped-def]
    resp = await s3.get_object(Bucket=bucket, Key=key)
    total = 0
    async with resp["Body"] as stream:
        while chunk := await stream.read(1024 * 1024):
            total += len(chunk)
    return total


async def main() -> None:
    op, path, bucket, key = sys.argv[1:5]
    async with client(get_session()) as s3:
        if op == "put-small":  # readiness probe / warm-up
            await s3.put_object(Bucket=bucket, Key=key, Body=b"x")
            print(json.dumps({"seconds": 0, "bytes": 1}))
            return
        start = time.perf_counter()
        n = await upload(s3, path, bucket, key) if op == "upload" else await download(s3, bucket, key)
        print(json.dumps({"seconds": time.perf_counter() - start, "bytes": n}))


if __name__ == "__main__":
    asyncio.run(main())
