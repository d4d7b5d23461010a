"""`raysim reproduce ...`: regenerate a paper's tables and figures from scratch (one command each)."""

from __future__ import annotations

import raysim.reproduce.clustered  # noqa: F401  (registers `raysim reproduce clustered`)
import raysim.reproduce.dsac  # noqa: F401  (registers `raysim reproduce dsac`)
import raysim.reproduce.pfedht  # noqa: F401  (registers `raysim reproduce pfedht`)
from raysim.reproduce.harness import reproduce_app

__all__ = ["reproduce_app"]
