"""S3 keys are at most 1,024 bytes of UTF-8, counting prefix, session path and file
(issue 12, item 9): a file whose whole key would be longer is refused visibly; the rest of
its session goes up."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from agent.planning import MAX_KEY_BYTES, key_length_reason
from tests.conftest import Rig


def test_key_length_counts_bytes_not_characters() -> None:
    assert key_length_reason("k" * MAX_KEY_BYTES) is None
    reason = key_length_reason("é" * 513)  # 1,026 bytes in 513 characters
    assert reason is not None and "1026 bytes" in reason


def test_file_whose_whole_key_is_too_long_is_refused_and_the_rest_uploads(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig()
    # Each part is within its own limit (a name of 250 bytes, a session path of ~750), but
    # prefix + source + session + file is over 1,024 bytes.
    deep = "/".join(["d" * 120] * 5)
    session = rig.session(f"mouse1/{'s' * 200}")
    long_name = f"{deep}/{'n' * 200}.bin"
    (session / long_name).parent.mkdir(parents=True)
    (session / long_name).write_bytes(b"long")
    (session / "short.bin").write_bytes(b"short")
    time.sleep(1.2)
    dry = rig.agentctl("sync", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    result = rig.agentctl("sync", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sessions_uploaded"] == 1
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=rig.bucket)["Contents"]]
    assert all(len(key.encode()) <= MAX_KEY_BYTES for key in keys)
    assert any(key.endswith("/short.bin") for key in keys)
    manifest_key = next(key for key in keys if key.endswith("ingest-manifest.json"))
    manifest = json.loads(client.get_object(Bucket=rig.bucket, Key=manifest_key)["Body"].read())
    refused = json.dumps(manifest["refused"])
    assert "object key would be" in refused and long_name in refused
    assert "object key would be" in dry.stdout
