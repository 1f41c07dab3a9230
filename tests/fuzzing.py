"""Hypothesis profiles: ``ci`` (the default) searches a fixed, derandomized set of examples, so a red run replays
exactly; ``wide`` (``HYPOTHESIS_PROFILE=wide``) searches ten times as many, from a fresh seed each run, to look for
what the fixed set misses."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True)
settings.register_profile("wide", deadline=None, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(ci: int) -> int:
    """How many examples a test searches: ``ci`` under the ci profile, ten times that under ``wide``."""
    return ci * 10 if PROFILE == "wide" else ci
