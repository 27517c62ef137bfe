"""The S3 verdicts: given the server's answers to the doctor's requests, say what works
(credentials, endpoint, bucket, clock, writes, checksums, conditional writes, multipart
uploads, ListParts, ListMultipartUploads) and how to fix what does not."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from agent.checksums import S3_ALGORITHM_NAMES
from agent.doctor.checks import FAIL, OK, SKIPPED, WARNING, Check, _duration, mask_key_id
from agent.doctor.s3_client import Answer, FoundCredentials
from agent.units import human_bytes

MAX_SKEW = 300.0  # S3 refuses signatures 15 min off; well before that, logs and ages lie
SKEW_WARNING = 60.0
_AUTH_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
    }
)


def credentials_verdict(found: FoundCredentials, answer: Answer) -> Check:
    """Given the credentials found and the server's answer to the first request, say
    whether the server accepted them (a policy refusal still means it did)."""
    if answer.unreachable:
        return Check("credentials", SKIPPED, f"{found.shown}; not checked: no answer")
    if answer.code == "SignatureDoesNotMatch":
        return Check(
            "credentials",
            FAIL,
            f"{found.shown}: the server rejects the secret key (SignatureDoesNotMatch): it "
            "is not the secret of this access key id",
            f"set the secret access key that belongs to {mask_key_id(found.access_key)} in "
            f"{found.where}",
        )
    if answer.code in ("InvalidAccessKeyId", "InvalidClientTokenId"):
        return Check(
            "credentials",
            FAIL,
            f"{found.shown}: the server does not know this access key id ({answer.code})",
            f"use an access key that exists on this server and account, in {found.where}",
        )
    if answer.code in _AUTH_CODES:
        return Check(
            "credentials",
            FAIL,
            f"{found.shown}: the session token is invalid or expired ({answer.code})",
            f"refresh the temporary credentials, or remove AWS_SESSION_TOKEN; see {found.where}",
        )
    if answer.code == "RequestTimeTooSkewed":
        return Check("credentials", SKIPPED, f"{found.shown}; not checked: clock refused")
    return Check("credentials", OK, f"{found.shown}, accepted by the server")


def endpoint_verdict(endpoint: str, answer: Answer) -> Check:
    """Given the first answer, say whether the endpoint answered at all."""
    if answer.unreachable:
        return Check(
            "endpoint",
            FAIL,
            f"cannot reach {endpoint}: {answer.message}",
            "check [destination] endpoint_url and region, the network path (proxy, firewall, "
            f"DNS) and that the server runs: curl -sI {endpoint}",
        )
    return Check("endpoint", OK, f"{endpoint} answers")


def bucket_verdict(bucket: str, prefix: str, endpoint: str, answer: Answer) -> Check:
    """Given the answer to listing the agent's prefix, say whether the bucket is there and
    listable (the agent lists a session's prefix before uploading it)."""
    where = f"{prefix}/" if prefix else "the bucket's root"
    if answer.ok:
        return Check("bucket", OK, f"{bucket} exists; listing {where} allowed")
    if answer.code == "NoSuchBucket":
        return Check(
            "bucket",
            FAIL,
            f"bucket {bucket!r} does not exist at {endpoint} (NoSuchBucket)",
            f"create it (aws s3 mb s3://{bucket}) or correct [destination] bucket",
        )
    if answer.denied:
        return Check(
            "bucket",
            FAIL,
            f"listing {where} in {bucket} denied ({answer.summary}): the agent lists a "
            "session's prefix to skip what S3 already holds",
            f"allow s3:ListBucket on arn:aws:s3:::{bucket} for these credentials",
        )
    fix = "check [destination] bucket, endpoint_url and region"
    if answer.code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301"):
        fix = "set [destination] region to the bucket's region"
    return Check("bucket", FAIL, f"{bucket}: {answer.summary}", fix)


def clock_verdict(
    server_date: str | None,
    sent_at: float,
    received_at: float,
    *,
    limit: float = MAX_SKEW,
    warning: float = SKEW_WARNING,
) -> Check:
    """Given the server's Date header and the local times a request was sent and its answer
    received, say how far the local clock is off (the Date header has 1 s resolution)."""
    if server_date is None:
        return Check("clock", WARNING, "the server sent no Date header: skew not measured")
    try:
        server = parsedate_to_datetime(server_date).timestamp()
    except (TypeError, ValueError):
        return Check("clock", WARNING, f"unreadable Date header {server_date!r}")
    skew = (sent_at + received_at) / 2 - server
    direction = "ahead of" if skew > 0 else "behind"
    said = f"local clock {_duration(skew)} {direction} the server"
    fix = (
        "enable time synchronisation: timedatectl set-ntp true (systemd-timesyncd), or "
        "install chrony; check with timedatectl status"
    )
    if abs(skew) > limit:
        return Check(
            "clock",
            FAIL,
            f"{said}: over {_duration(limit)}, request signatures fail and ages are wrong",
            fix,
        )
    if abs(skew) > warning:
        return Check("clock", WARNING, f"{said}: drifting", fix)
    return Check("clock", OK, f"within {_duration(max(abs(skew), 1))} of the server")


def write_verdict(
    bucket: str,
    key: str,
    put: Answer,
    get: Answer | None,
    *,
    expected: bytes,
    removed: Answer | None,
) -> Check:
    """Given the answers to writing, reading back and deleting the probe object, say whether
    the agent can write under its prefix and whether the probe is gone."""
    url = f"s3://{bucket}/{key}"
    prefix = key.split("/.ingest-agent/", 1)[0] if "/.ingest-agent/" in key else ""
    resource = f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}*"
    if not put.ok:
        if put.denied:
            return Check(
                "bucket writable",
                FAIL,
                f"PutObject denied ({put.summary}): these credentials are read-only here; "
                "nothing can be uploaded",
                f"allow s3:PutObject on {resource}",
            )
        fix = "check the bucket's policy and [destination] storage_class and acl"
        if put.code == "AccessControlListNotSupported":
            fix = "remove [destination] acl: the bucket enforces object ownership"
        elif put.code == "InvalidStorageClass":
            fix = "correct or remove [destination] storage_class"
        return Check("bucket writable", FAIL, f"PutObject {url}: {put.summary}", fix)
    if get is None or not get.ok:
        summary = get.summary if get is not None else "not tried"
        return Check(
            "bucket writable",
            FAIL,
            f"wrote the probe but cannot read it back ({summary}): the agent reads objects "
            "back to recognise what is already uploaded, and `agentctl verify` does",
            f"allow s3:GetObject on {resource}",
        )
    data = get.response.get("Data", b"") if get.response is not None else b""
    if data != expected:
        return Check(
            "bucket writable",
            FAIL,
            f"read back {len(data)} bytes that differ from the {len(expected)} written",
            "something between here and the bucket alters objects (proxy, gateway): check "
            "[destination] endpoint_url",
        )
    if removed is None or not removed.ok:
        summary = removed.summary if removed is not None else "not tried"
        return Check(
            "bucket writable",
            WARNING,
            f"wrote, read back and compared a probe, but could not delete it ({summary}): "
            f"{url} is left behind",
            f"remove it with credentials allowed to delete (aws s3 rm {url}); the agent "
            "itself never deletes objects, so its own policy needs no s3:DeleteObject",
        )
    return Check("bucket writable", OK, f"wrote, read back and deleted a probe ({url})")


def checksum_verdict(algorithm: str, sent: str, answer: Answer, enabled: bool) -> Check:
    """Given the answer to a PutObject carrying an x-amz-checksum header, say whether the
    server takes the checksums the agent sends (`server_checksums`)."""
    name = S3_ALGORITHM_NAMES[algorithm]
    if not enabled:
        return Check(
            "checksums",
            SKIPPED,
            "off in the config (server_checksums = false): the agent sends no checksum "
            f"headers; its own {name} checksums stay in object metadata and the manifest",
        )
    if answer.ok and answer.response is not None:
        echoed = answer.response.get(f"Checksum{name}")
        if echoed == sent:
            return Check("checksums", OK, f"{name} checksum header accepted and echoed")
        return Check(
            "checksums",
            WARNING,
            f"{name} checksum header accepted but not echoed: the server may not verify "
            "it; the agent still records its own checksums in metadata and the manifest",
            "`agentctl verify --download` compares the stored bytes end to end",
        )
    return Check(
        "checksums",
        FAIL,
        f"{name} checksum header rejected ({answer.summary}): with server_checksums = true "
        "every upload would fail",
        "set server_checksums = false under [destination] (the agent then keeps its "
        "checksums in object metadata and the manifest only)",
    )


def conditional_verdict(mode: str, answer: Answer | None) -> Check:
    """Given the answer to PutObject with If-None-Match: * on a key that exists, say whether
    the server supports conditional writes and what the agent does without them."""
    if mode == "off" or answer is None:
        return Check(
            "conditional writes",
            SKIPPED,
            'off in the config (conditional_writes = "off"): the agent writes unconditionally',
        )
    if answer.code in ("PreconditionFailed", "412") or answer.status == 412:
        return Check(
            "conditional writes",
            OK,
            "supported (If-None-Match: * answered 412): the agent never replaces an object "
            "another writer put at one of its keys",
        )
    unguarded = "an object another writer put at one of the agent's keys would be replaced"
    if answer.ok:
        return Check(
            "conditional writes",
            WARNING,
            f"the server ignored If-None-Match: * and overwrote the probe: {unguarded}, and "
            "the agent cannot tell",
            'give this agent a prefix no one else writes to; conditional_writes = "off" says so',
        )
    if answer.code in ("NotImplemented", "501") or answer.status == 501:
        return Check(
            "conditional writes",
            WARNING,
            f"not supported ({answer.summary}): the agent notices on its first upload and "
            f"writes unconditionally from then on; {unguarded}",
            'nothing needed; conditional_writes = "off" skips the first attempt',
        )
    return Check(
        "conditional writes",
        FAIL,
        f"If-None-Match: * rejected ({answer.summary}): the agent sends it on each file's "
        "first upload, and those uploads would fail",
        'set conditional_writes = "off" under [destination]',
    )


def multipart_verdict(
    bucket: str, key: str, threshold: int, created: Answer, aborted: Answer | None
) -> Check:
    """Given the answers to CreateMultipartUpload and AbortMultipartUpload, say whether
    the agent can send large files and clean up after itself."""
    if not created.ok:
        if created.denied:
            return Check(
                "multipart",
                FAIL,
                f"CreateMultipartUpload denied ({created.summary}): files of "
                f"{human_bytes(threshold)} or more cannot be uploaded",
                "allow s3:PutObject (it covers CreateMultipartUpload, UploadPart and "
                f"CompleteMultipartUpload) and s3:AbortMultipartUpload on arn:aws:s3:::{bucket}",
            )
        return Check(
            "multipart",
            FAIL,
            f"CreateMultipartUpload: {created.summary}: files of {human_bytes(threshold)} or more "
            "cannot be uploaded",
            "if the server lacks multipart uploads, raise [upload] multipart_threshold "
            "(up to 5GiB) above your largest file",
        )
    upload_id = str(created.response["UploadId"]) if created.response is not None else "?"
    if aborted is None or not aborted.ok:
        summary = aborted.summary if aborted is not None else "not tried"
        return Check(
            "multipart",
            FAIL,
            f"CreateMultipartUpload works but AbortMultipartUpload does not ({summary}): "
            f"the probe upload {upload_id} on s3://{bucket}/{key} stays open, and so would "
            "the agent's uploads of files that change while being sent",
            f"allow s3:AbortMultipartUpload; then: aws s3api abort-multipart-upload "
            f"--bucket {bucket} --key {key} --upload-id {upload_id}",
        )
    return Check("multipart", OK, "CreateMultipartUpload and AbortMultipartUpload allowed")


def list_parts_verdict(answer: Answer) -> Check:
    """Given the answer to ListParts on an open upload, say how uploads resume."""
    if answer.ok:
        return Check(
            "ListParts",
            OK,
            "supported: a resumed upload is checked against the parts the server holds",
        )
    if answer.not_implemented:
        return Check(
            "ListParts",
            WARNING,
            f"not supported ({answer.summary}): a resumed upload trusts the agent's own "
            "record of finished parts",
        )
    return Check(
        "ListParts",
        FAIL,
        f"ListParts: {answer.summary}: resuming an interrupted multipart upload would fail",
        "allow s3:ListMultipartUploadParts for these credentials",
    )


def list_uploads_verdict(bucket: str, answer: Answer) -> Check:
    """Given the answer to ListMultipartUploads, say whether uploads a crash left open
    are found and aborted at start."""
    if answer.ok:
        return Check(
            "ListMultipartUploads",
            OK,
            "supported: uploads a crash left open are found and aborted at start",
        )
    lifecycle = "a bucket lifecycle rule AbortIncompleteMultipartUpload (e.g. after 7 days)"
    if answer.not_implemented:
        return Check(
            "ListMultipartUploads",
            WARNING,
            f"not supported ({answer.summary}): uploads created but never recorded (a crash "
            "at that instant) cannot be found and aborted",
            f"add {lifecycle}",
        )
    return Check(
        "ListMultipartUploads",
        WARNING,
        f"ListMultipartUploads: {answer.summary}: at start the agent cannot find uploads a "
        "crash left open (it logs recovery_failed and carries on)",
        f"allow s3:ListBucketMultipartUploads on arn:aws:s3:::{bucket}, or add {lifecycle}",
    )
