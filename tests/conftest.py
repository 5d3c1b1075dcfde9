"""Shared pytest configuration. Area-specific fixtures live in each test folder's conftest."""

import os

from hypothesis import settings

# A shared 2-core CI machine can stall any single example; timing is measured by the
# benchmarks, not by hypothesis. In CI, examples are derandomized so a run is reproducible.
settings.register_profile("tokenergy", deadline=None, print_blob=True)
settings.register_profile("ci", parent=settings.get_profile("tokenergy"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "tokenergy")
