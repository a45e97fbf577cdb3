"""Reference material that lives outside this repository, and how the tests that need it say so.

A few tests compare skyform with SkyPilot itself: its verdicts on a corpus of real service
YAMLs and its autoscaler's recorded traces. That material is not part of the project; it sits
in a ``shared`` folder beside the checkout when it is available. Where it is absent, those
tests are skipped with the path they looked for, and the rest of the suite runs on the
fixtures the project owns (``tests/fixtures/``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: The folder beside the checkout that holds the reference material, when present.
SHARED = Path(__file__).resolve().parents[2] / "shared"
#: Real SkyServe service YAMLs with SkyPilot's own verdicts (``GROUND_TRUTH.json``).
CORPUS = SHARED / "corpus"
#: SkyServe's autoscaler decisions, tick for tick, as recorded from SkyPilot.
AUTOSCALER_TRACES = SHARED / "reference" / "autoscaler-traces.md"


def needs(path: Path, what: str) -> pytest.MarkDecorator:
    """Skip, naming ``path`` and saying it is outside the repository, when ``path`` is absent."""
    return pytest.mark.skipif(
        not path.exists(),
        reason=f"needs {what} at {path} (reference material kept outside this repository; "
               "absent here)",
    )


needs_corpus = needs(CORPUS, "the SkyServe corpus with SkyPilot's verdicts")
needs_autoscaler_traces = needs(AUTOSCALER_TRACES, "SkyServe's recorded autoscaler traces")
