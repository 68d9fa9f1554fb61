"""The S3 adapter: aiobotocore, imported lazily, and what its errors mean for a copy.

Every failure is sorted into what the outbox understands, and a failure that the owner must fix
(a bucket that does not exist, a key the endpoint does not know, a wrong secret, an endpoint
that cannot be reached) also carries a sentence naming the config key, shown as the module's
health until a probe succeeds again. None of them drops a copy: evidence waits in the outbox
until the settings are fixed. Only a file that is gone from the card is given up
("lost before upload").
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from spyoncino.helpers.outbox import DeliveryError, ServerError, TransientError

from ._config import Config


@dataclass(frozen=True)
class Problem:
    """A failure with what it means: the outbox's error and, when the owner must act, why."""

    error: DeliveryError
    #: "<section>.<key>: ..." when the settings (or the endpoint) are the trouble
    owner: str | None = None


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 (Content-MD5)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 (the ETag S3 computes)


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives an object made of parts: MD5 of the parts' MD5s, ``-<count>``."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"  # noqa: S324


def make_client(cfg: Config) -> Any:
    """An aiobotocore client context manager (``async with``) for ``cfg``."""
    from aiobotocore.session import get_session
    from botocore.config import Config as BotoConfig

    boto_cfg = BotoConfig(
        region_name=cfg.region,
        connect_timeout=cfg.timeout_s,
        read_timeout=cfg.timeout_s,
        # the outbox retries, with backoff, across restarts; botocore's own retries would
        # only hide an outage from it
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": cfg.addressing_style},
        # Content-MD5 is sent and checked explicitly; the CRC32 botocore adds by default is
        # refused by several S3-compatible servers
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = get_session()
    secret = cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
    return session.create_client(
        "s3",
        endpoint_url=cfg.endpoint_url or None,
        region_name=cfg.region,
        aws_access_key_id=cfg.access_key_id,
        aws_secret_access_key=secret,
        config=boto_cfg,
    )


def classify(exc: BaseException, cfg: Config, section: str) -> Problem:
    """What ``exc`` (raised by a client call) means."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = cfg.endpoint_url or f"AWS {cfg.region}"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        msg = f"{section}.access_key_id: no credentials (set it and secret_access_key)"
        return Problem(TransientError(msg), msg)
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError)):
        msg = f"{section}.endpoint_url: cannot reach {where}: {type(exc).__name__}"
        return Problem(TransientError(msg), msg)
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{code or status}: {str(err.get('Message', ''))[:200]}"
        if status >= 500 or code in {"SlowDown", "InternalError", "ServiceUnavailable"}:
            return Problem(ServerError(f"{where}: {text}"))
        if code in {"RequestTimeout", "RequestTimeTooSkewed"}:
            return Problem(TransientError(f"{where}: {text}"))
        if code in {"NoSuchBucket", "404"} and status == 404 and code != "NoSuchKey":
            msg = f"{section}.bucket: no bucket {cfg.bucket!r} at {where}"
        elif code == "InvalidAccessKeyId":
            msg = f"{section}.access_key_id: {where} does not know this access key"
        elif code == "SignatureDoesNotMatch":
            msg = f"{section}.secret_access_key: {where} refused the signature (wrong secret)"
        elif code in {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"} or status == 403:
            msg = (
                f"{section}.access_key_id: access denied to bucket {cfg.bucket!r} "
                "(the key needs s3:PutObject, s3:GetObject and the multipart actions)"
            )
        elif code in {"PermanentRedirect", "AuthorizationHeaderMalformed", "301"}:
            msg = f"{section}.region: the bucket is in another region ({text})"
        elif code in {"InvalidStorageClass"}:
            msg = f"{section}.storage_class: refused by {where} ({text})"
        elif code in {"KMS.NotFoundException", "InvalidArgument", "KMSAccessDenied"}:
            msg = (
                f"{section}.server_side_encryption: refused by {where} ({text}); check "
                "storage_class and sse_kms_key_id too"
            )
        else:
            msg = f"{section}: {where} refused the upload ({text})"
        return Problem(TransientError(msg), msg)
    if isinstance(exc, (BotoCoreError, OSError, TimeoutError)):
        msg = f"{section}.endpoint_url: {where}: {type(exc).__name__}: {exc}"[:300]
        return Problem(TransientError(msg), msg)
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        aiohttp = None  # type: ignore[assignment]
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        msg = f"{section}.endpoint_url: cannot reach {where}: {type(exc).__name__}"
        return Problem(TransientError(msg), msg)
    return Problem(TransientError(repr(exc)[:300]))


def error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code or str(status)
    return ""
