"""Google Cloud Storage backend for `gs://bucket/optional/prefix`, on gcloud-aio-storage.

- One aiohttp session per process, opened in `start()`, shared by gcloud-aio's `Storage` and our streamed requests.
- Reads: object metadata, then ranged `alt=media` downloads pinned to the generation seen at open, so a concurrent
  overwrite never splices two versions into one response.
- Writes: one simple upload for bodies ending within the first block; otherwise a resumable session driven here
  (gcloud-aio's "resumable" upload sends the whole body in one request). The object appears only with the final
  chunk; any failure cancels the session.
- Multipart: neither gcloud-aio nor fake-gcs-server has XML-API multipart, so each part is a staging object under
  the reserved `.artifact.uploading.mpu/` segment, PUT by the client to a V4-signed URL and composed into the target
  at complete. Abandoned uploads leave staging objects behind: give the bucket a lifecycle rule on that prefix.

- Signing: V4 URLs, signed with a service-account key, or through IAM signBlob when there is none (GKE Workload
  Identity, GCE: the metadata server's account, or a configured one); `credentials` holds the rule.

The store (`store`) holds its parts: the client (`client`: session, names, requests, object primitives), the reader
(`reader`), the object writer (`writer`), the URL signer (`signing`, with `iam` and the rule in `credentials`) and
the composed uploads (`multipart`); `errors` maps failures, `config` the destination URI (the settings are
`settings.gcs`).
"""

from app.storage.gcs.store import GCSStore

__all__ = ["GCSStore"]
