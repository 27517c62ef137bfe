"""sqlite_utils, imported before anything else in `agent.state`, without numpy.

sqlite_utils imports numpy whenever numpy is installed, to store numpy values; the agent
stores none. On a lab computer with scientific Python that import cost about 0.2 s at every
start of `agentctl` (measured in the bench's environment), a third of a no-op sync. numpy is
hidden only while sqlite_utils loads: anything that imports numpy later gets it as usual.
"""

from __future__ import annotations

import sys

if "numpy" in sys.modules or "sqlite_utils" in sys.modules:
    import sqlite_utils  # already paid for
else:
    sys.modules["numpy"] = None  # type: ignore[assignment]  # makes `import numpy` fail
    try:
        import sqlite_utils
    finally:
        del sys.modules["numpy"]

__all__ = ["sqlite_utils"]
