"""The S3 probes: write, read back and delete a probe object, open and abort a multipart
upload, and `s3_checks`, every S3 check in report order over one shared client."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import botocore.exceptions

from agent.checksums import S3_ALGORITHM_NAMES, digest_b64
from agent.config import DestinationSettings, Settings
from agent.doctor.checks import FAIL, SKIPPED, Check, skipped
from agent.doctor.s3_client import (
    Answer,
    S3Probe,
    doctor_upload_settings,
    find_credentials,
    probe_keys,
)
from agent.doctor.s3_verdicts import (
    bucket_verdict,
    checksum_verdict,
    clock_verdict,
    conditional_verdict,
    credentials_verdict,
    endpoint_verdict,
    list_parts_verdict,
    list_uploads_verdict,
    multipart_verdict,
    write_verdict,
)
from agent.transfer import AGENT_METADATA_MARK, store_from_settings

# The S3 checks, in the order they are printed.
S3_CHECKS = (
    "credentials",
    "endpoint",
    "bucket",
    "bucket writable",
    "multipart",
    "checksums",
    "conditional writes",
    "ListParts",
    "ListMultipartUploads",
    "clock",
)


def _version(answer: Answer) -> str | None:
    version = answer.response.get("VersionId") if answer.response is not None else None
    return str(version) if version and version != "null" else None


def object_checks(
    probe: S3Probe, key: str, destination: DestinationSettings, agent_name: str
) -> list[Check]:
    """Write a probe object, read it back, try a checksum header and a conditional write on
    it, delete it (every version written, in a versioned bucket). Return the checks
    "bucket writable", "checksums" and "conditional writes"."""
    data = os.urandom(1024)
    metadata = {AGENT_METADATA_MARK: agent_name, "agent-doctor": "probe"}
    put = probe.put(key, data, metadata)
    if not put.ok:
        return [
            write_verdict(probe.bucket, key, put, None, expected=data, removed=None),
            *skipped(["checksums", "conditional writes"], "the probe could not be written"),
        ]
    versions = [_version(put)]
    get: Answer | None = None
    summed: Answer | None = None
    conditional: Answer | None = None
    algorithm = destination.checksum
    sent = digest_b64(algorithm, data)
    try:
        get = probe.get(key)
        if destination.server_checksums:
            name = S3_ALGORITHM_NAMES[algorithm]
            summed = probe.put(
                key, data, metadata, ChecksumAlgorithm=name, **{f"Checksum{name}": sent}
            )
            versions.append(_version(summed))
        if destination.conditional_writes != "off":
            conditional = probe.put(key, data, metadata, IfNoneMatch="*")
            versions.append(_version(conditional))
    finally:
        removed = _remove(probe, key, versions)
    return [
        write_verdict(probe.bucket, key, put, get, expected=data, removed=removed),
        checksum_verdict(algorithm, sent, summed or Answer(None), destination.server_checksums),
        conditional_verdict(destination.conditional_writes, conditional),
    ]


def _remove(probe: S3Probe, key: str, versions: list[str | None]) -> Answer:
    """Delete the probe: each version written (versioned bucket: no delete marker, nothing
    left), or the key. Return the first failure, or the last answer."""
    written = sorted({version for version in versions if version is not None})
    answers = [probe.delete(key, version) for version in written] or [probe.delete(key)]
    return next((answer for answer in answers if not answer.ok), answers[-1])


def multipart_checks(probe: S3Probe, key: str, prefix: str, threshold: int) -> list[Check]:
    """Create a multipart upload on a probe key, ask ListParts and ListMultipartUploads
    about it, abort it. Return the checks "multipart", "ListParts", "ListMultipartUploads"."""
    client, bucket = probe.client, probe.bucket
    arguments: dict[str, Any] = {
        "Bucket": bucket,
        "Key": key,
        "ContentType": "application/octet-stream",
        **probe.extra_args,
    }
    created = probe.ask(
        "CreateMultipartUpload", key, lambda: client.create_multipart_upload(**arguments)
    )
    if not created.ok or created.response is None:
        return [
            multipart_verdict(bucket, key, threshold, created, None),
            *skipped(["ListParts", "ListMultipartUploads"], "no multipart upload to list"),
        ]
    upload_id = str(created.response["UploadId"])
    aborted: Answer | None = None
    try:
        parts = probe.ask(
            "ListParts",
            key,
            lambda: client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id),
        )
        uploads = probe.ask(
            "ListMultipartUploads",
            prefix,
            lambda: client.list_multipart_uploads(Bucket=bucket, Prefix=prefix),
        )
    finally:
        aborted = probe.ask(
            "AbortMultipartUpload",
            key,
            lambda: client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
        )
        if aborted.code == "NoSuchUpload":  # already gone counts as aborted, as in transfer
            aborted = replace(aborted, response={})
    return [
        multipart_verdict(bucket, key, threshold, created, aborted),
        list_parts_verdict(parts),
        list_uploads_verdict(bucket, uploads),
    ]


def s3_checks(settings: Settings, *, clock: Callable[[], float] = time.time) -> list[Check]:
    """Every S3 check, in the order of S3_CHECKS, sharing one client. Checks that cannot
    run after an earlier failure (no credentials, no answer, no bucket) say so."""
    destination = settings.destination
    found, credentials = find_credentials(destination.profile)
    if found is None:
        return [credentials, *skipped(S3_CHECKS[1:], "no usable credentials")]
    try:
        store = store_from_settings(destination, doctor_upload_settings(settings.upload))
    except (botocore.exceptions.BotoCoreError, ValueError) as error:
        return [
            credentials,
            Check(
                "endpoint",
                FAIL,
                f"cannot build an S3 client: {error}",
                "check [destination] endpoint_url and region",
            ),
            *skipped(S3_CHECKS[2:], "no S3 client"),
        ]
    probe = S3Probe(store.client, store.bucket, extra_args=store.extra_args)
    prefix = f"{destination.prefix}/" if destination.prefix else ""
    sent_at = clock()
    listing = probe.ask(
        "ListObjectsV2",
        prefix,
        lambda: probe.client.list_objects_v2(Bucket=probe.bucket, Prefix=prefix, MaxKeys=1),
    )
    received_at = clock()
    found_checks = {
        "credentials": credentials_verdict(found, listing),
        "endpoint": endpoint_verdict(probe.endpoint, listing),
    }
    if listing.unreachable:
        return [*found_checks.values(), *skipped(S3_CHECKS[2:], "the server did not answer")]
    if listing.code == "RequestTimeTooSkewed":
        found_checks["clock"] = Check(
            "clock",
            FAIL,
            f"the server refused the request's time ({listing.summary})",
            "enable time synchronisation: timedatectl set-ntp true, or install chrony",
        )
        return _in_order(found_checks, "the server refused the local clock")
    found_checks["clock"] = clock_verdict(listing.date, sent_at, received_at)
    if found_checks["credentials"].status == FAIL:
        return _in_order(found_checks, "the server refused the credentials")
    found_checks["bucket"] = bucket_verdict(
        destination.bucket, destination.prefix, probe.endpoint, listing
    )
    if listing.code == "NoSuchBucket":
        return _in_order(found_checks, "no bucket to write to")
    object_key, multipart_key = probe_keys(destination, settings.agent.name)
    doctor_prefix = object_key.rsplit("/", 1)[0] + "/"
    for check in object_checks(probe, object_key, destination, settings.agent.name):
        found_checks[check.name] = check
    for check in multipart_checks(
        probe, multipart_key, doctor_prefix, settings.upload.multipart_threshold
    ):
        found_checks[check.name] = check
    return _in_order(found_checks, "an earlier check failed")


def _in_order(found: Mapping[str, Check], reason: str) -> list[Check]:
    return [found.get(name) or Check(name, SKIPPED, f"not checked: {reason}") for name in S3_CHECKS]
