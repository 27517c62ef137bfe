"""`agentctl verify`: which sessions to check, and the checks (agent/verify.py does one)."""

from __future__ import annotations

from agent.config import Settings
from agent.state import State
from agent.transfer import store_from_settings
from agent.verify import SessionCheck, verify_session


class UnknownSessionError(LookupError):
    """The session asked for is not in the state database."""


def verify(
    settings: Settings,
    state: State,
    session_id: str | None,
    *,
    quick: bool,
    download: bool,
) -> list[SessionCheck]:
    """Check one session, or every session with a manifest, against S3 and the local files.

    Raise UnknownSessionError when `session_id` names no session.
    """
    if session_id is not None:
        record = state.sessions.get(session_id)
        if record is None:
            raise UnknownSessionError(session_id)
        targets = [record]
    else:
        targets = [record for record in state.sessions.all() if record.manifest_key is not None]
    store = store_from_settings(settings.destination, settings.upload)
    return [
        verify_session(state, store, record, quick=quick, download=download) for record in targets
    ]
