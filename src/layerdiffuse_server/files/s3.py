"""Files in an S3-compatible bucket (AWS S3, Ceph radosgw, MinIO, R2 …) through boto3.

Endpoint, region and credentials come from boto3's standard chain (``AWS_ENDPOINT_URL``,
``AWS_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws/config``, instance roles),
so the service is pointed at any provider the way every AWS tool is. Presigned URLs use
signature version 4, which every S3-compatible service checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .blobs import CHUNK_BYTES, BlobReader, StorageError
from .content import content_disposition

_MISSING = {"NoSuchKey", "404", "NotFound"}


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _stream(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None) -> None:
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise StorageError("s3:// storage needs boto3: pip install 'layerdiffuse-server[s3]'") from None
            config = Config(
                signature_version="s3v4",
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            )
            client = boto3.client("s3", config=config)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.location = f"s3://{bucket}/{self.prefix}"

    def _key(self, file_id: str) -> str:
        return f"{self.prefix}{file_id}"

    def _fail(self, action: str, error: Exception) -> StorageError:
        return StorageError(f"cannot {action} in {self.location}: {error}")

    def put(self, file_id: str, data: bytes, content_type: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(file_id), Body=data, ContentType=content_type)
        except Exception as error:
            raise self._fail("store a file", error) from error

    def open(self, file_id: str) -> BlobReader | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(file_id))
        except Exception as error:
            if _error_code(error) in _MISSING:
                return None
            raise self._fail("read a file", error) from error
        return BlobReader(size=int(answer["ContentLength"]), chunks=_stream(answer["Body"]))

    def presigned_url(self, file_id: str, *, file_name: str, content_type: str, expires_seconds: int) -> str | None:
        params = {
            "Bucket": self.bucket,
            "Key": self._key(file_id),
            "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition(content_type, file_name),
        }
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds))

    def delete(self, file_id: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(file_id))
        except Exception as error:
            if _error_code(error) not in _MISSING:
                raise self._fail("delete a file", error) from error

    def check_writable(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            raise self._fail("reach the bucket", error) from error
