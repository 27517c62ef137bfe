"""The soak's CI subset (`tests/soak.py`; `make soak` is the few-minute run, `--kills N
--minutes M` the long one): five SIGKILLs, one rollback of the state database and faults on
the network over 45 s, with a fixed seed, then convergence and every check. About two
minutes; marked slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak import SoakOptions, markdown, run_soak


@pytest.mark.slow
def test_soak_ci_subset_loses_nothing(tmp_path: Path) -> None:
    result = run_soak(SoakOptions(kills=5, minutes=0.75, seed=9, workdir=tmp_path, quiet=True))
    details = markdown(result)
    assert len(result.kills) == 5, details
    assert result.database_restored_after_kill is not None, details
    assert sum(result.faults.values()) > 0, details
    assert result.converged, details
    assert result.lost == [], details
    assert result.corrupt == [], details
    assert result.files_verified == result.files_expected > 0, details
    assert result.manifest_problems == [], details
    assert result.manifests_right == result.sessions, details
    assert result.open_uploads == [], details
    assert result.canary_uploaded == [], details
    assert result.outside_reads == [], details
    assert result.source_changes == [], details
    assert result.agent_verify_exit == 0, details
    assert result.passed, details
