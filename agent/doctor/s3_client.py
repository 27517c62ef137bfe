"""The S3 side of the doctor: one client, built like the agent's, what its answers mean
(`Answer`), and which credentials boto3's chain finds."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions

from agent.config import DestinationSettings, UploadSettings
from agent.doctor.checks import FAIL, OK, Check, _user, mask_key_id
from agent.planning import join_key
from agent.redact import SECRETS, redact
from agent.s3errors import NotImplementedByServerError, classify_error

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled"})


# --- S3: one client, and what its answers mean --------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What the server said to one request. `response` is None unless it succeeded;
    `unreachable` means no HTTP answer came at all (refused, timed out, TLS failed)."""

    response: Mapping[str, Any] | None
    code: str = ""
    status: int = 0
    message: str = ""
    date: str | None = None
    unreachable: bool = False
    not_implemented: bool = False

    @property
    def ok(self) -> bool:
        """The request succeeded."""
        return self.response is not None

    @property
    def denied(self) -> bool:
        """The server authenticated the request and refused it (a policy said no)."""
        return self.code in _DENIED_CODES or (self.status == 403 and not self.code)

    @property
    def summary(self) -> str:
        """The error as the server gave it: "Code (status): message"."""
        if self.unreachable:
            return self.message
        text = f"{self.code} ({self.status})" if self.status else self.code
        return f"{text}: {self.message}" if self.message and self.message != self.code else text


def _headers(response: Mapping[str, Any]) -> Mapping[str, str]:
    headers: Mapping[str, str] = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return headers


def answer_of(operation: str, key: str, call: Callable[[], Any]) -> tuple[Answer, bool]:
    """Make one request; return what the server said, and whether trying again may help
    (by the agent's own classification of S3 errors)."""
    try:
        response = call()
    except botocore.exceptions.ClientError as error:
        info = error.response.get("Error", {})
        metadata = error.response.get("ResponseMetadata", {})
        classified = classify_error(error, operation, key)
        status = int(metadata.get("HTTPStatusCode", 0) or 0)
        answer = Answer(
            None,
            code=str(info.get("Code", "")) or str(status),
            status=status,
            message=str(info.get("Message", "")),
            date=metadata.get("HTTPHeaders", {}).get("date"),
            not_implemented=isinstance(classified, NotImplementedByServerError),
        )
        return answer, classified.retryable
    except Exception as error:  # no HTTP answer: refused, timed out, TLS, no credentials
        lacking = (
            botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
        )
        answer = Answer(
            None,
            code=type(error).__name__,
            message=redact(f"{type(error).__name__}: {error}"),
            unreachable=not isinstance(error, lacking),
        )
        return answer, False
    return Answer(
        response,
        status=int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)),
        date=_headers(response).get("date"),
    ), False


class S3Probe:
    """The bucket as the doctor sees it: one client, built like the agent's, and one retry
    of answers the agent would retry too (never of an unreachable server: that is the
    answer)."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        extra_args: Mapping[str, str] | None = None,
        retries: int = 1,
        retry_delay: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.extra_args = dict(extra_args or {})
        self.retries = retries
        self.retry_delay = retry_delay
        self._sleep = sleep

    @property
    def endpoint(self) -> str:
        """The URL the client sends its requests to."""
        return str(self.client.meta.endpoint_url)

    def ask(self, operation: str, key: str, call: Callable[[], Any]) -> Answer:
        """Make one request (retried once if the agent would retry it); return the answer."""
        attempt = 0
        while True:
            answer, retryable = answer_of(operation, key, call)
            if not retryable or attempt >= self.retries:
                return answer
            attempt += 1
            self._sleep(self.retry_delay)

    def put(self, key: str, data: bytes, metadata: Mapping[str, str], **extra: Any) -> Answer:
        """PutObject, with the agent's storage class and ACL."""
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentLength": len(data),
            "ContentType": "application/octet-stream",
            "Metadata": dict(metadata),
            **self.extra_args,
            **extra,
        }
        return self.ask("PutObject", key, lambda: self.client.put_object(**arguments))

    def get(self, key: str) -> Answer:
        """GetObject, body read: the answer's response holds it as `Data`."""

        def call() -> dict[str, Any]:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
            return {"Data": answer["Body"].read(), "ResponseMetadata": answer["ResponseMetadata"]}

        return self.ask("GetObject", key, call)

    def delete(self, key: str, version: str | None = None) -> Answer:
        """DeleteObject (of one version, when given)."""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version is not None:
            arguments["VersionId"] = version
        return self.ask("DeleteObject", key, lambda: self.client.delete_object(**arguments))


def doctor_upload_settings(upload: UploadSettings) -> UploadSettings:
    """The agent's upload settings with short timeouts: the doctor answers in seconds."""
    return replace(
        upload,
        connect_timeout=min(upload.connect_timeout, 3.0),
        read_timeout=min(upload.read_timeout, 15.0),
    )


def probe_keys(destination: DestinationSettings, agent_name: str) -> tuple[str, str]:
    """(object probe key, multipart probe key) under the agent's prefix, unique per run."""
    token = secrets.token_hex(4)
    base = join_key(destination.prefix, ".ingest-agent", "doctor", f"{agent_name}-{token}")
    return f"{base}.probe", f"{base}.multipart.probe"


# --- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundCredentials:
    """Which credentials boto3's chain found (never the secret itself)."""

    access_key: str
    method: str  # botocore's Credentials.method: env, shared-credentials-file, iam-role...
    profile: str | None

    @property
    def shown(self) -> str:
        """The masked key id and where it came from."""
        profile = f", profile {self.profile}" if self.profile else ""
        return f"{mask_key_id(self.access_key)} (from {self.method}{profile})"

    @property
    def where(self) -> str:
        """Where an operator changes them."""
        if self.method == "env":
            return (
                "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; for the service: "
                "/etc/ingest-agent/environment)"
            )
        profile = self.profile or os.environ.get("AWS_PROFILE") or "default"
        if self.method == "shared-credentials-file":
            return f"~/.aws/credentials, profile [{profile}]"
        if self.method == "config-file":
            return f"~/.aws/config, profile [{profile}]"
        return f"the credential source {self.method!r}"


def find_credentials(profile: str | None) -> tuple[FoundCredentials | None, Check]:
    """Resolve boto3's credential chain as the agent will; return what was found (or None)
    and the credentials check as far as it can be told without the server."""
    fix = (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for the service: in "
        "/etc/ingest-agent/environment), or a profile ([destination] profile), or give the "
        "machine an instance role"
    )
    try:
        credentials = boto3.session.Session(profile_name=profile).get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except botocore.exceptions.ProfileNotFound:
        return None, Check(
            "credentials",
            FAIL,
            f"profile {profile!r} ([destination] profile) is not in ~/.aws/config or "
            "~/.aws/credentials",
            f"add the profile for {_user()}, or correct or remove [destination] profile",
        )
    except botocore.exceptions.BotoCoreError as error:
        return None, Check("credentials", FAIL, f"cannot load credentials: {error}", fix)
    if credentials is None or frozen is None:
        return None, Check("credentials", FAIL, "none found in boto3's credential chain", fix)
    SECRETS.add([frozen.access_key, frozen.secret_key, frozen.token])
    if not frozen.access_key or not frozen.secret_key:
        return None, Check(
            "credentials",
            FAIL,
            f"incomplete (from {credentials.method}): a key id or secret key is missing",
            fix,
        )
    found = FoundCredentials(frozen.access_key, str(credentials.method), profile)
    return found, Check("credentials", OK, f"{found.shown}, not yet checked by the server")
