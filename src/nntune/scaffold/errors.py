"""The error of ``nntune init`` (apart so that every scaffold module can raise it)."""

from __future__ import annotations

from nntune.errors import NntuneError


class ScaffoldError(NntuneError):
    pass
