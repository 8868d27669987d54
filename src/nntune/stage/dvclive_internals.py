"""The private API of dvclive that nntune needs, and nowhere else.

``Live.next_step()`` posts each step to DVC Studio, and builds that post first: it parses
every curve file written so far (``_get_live_data``), also when Studio is not configured
and the post is then dropped. That is O(epochs) per epoch: 5 of the 7 ms a step cost on
digits, and more with every epoch. :class:`StepLive` skips building it when dvclive itself
decided to skip Studio's "data" events (no Studio token or repository configured); with
Studio configured nothing changes. ``pyproject.toml`` bounds dvclive to the versions this
was tested with, and ``tests/test_layout.py`` checks that the installed dvclive still has
the name.
"""

from __future__ import annotations

from typing import Any

from dvclive import Live

# The private members of dvclive.Live used below.
USED = ("_studio_events_to_skip", "_dvc_repo")


class StepLive(Live):  # type: ignore[misc]  # dvclive is untyped
    """dvclive's ``Live``, without building a Studio post that will not be sent, and which
    closes the DVC repository it opened (its git files) when it ends or :meth:`close` is
    called. (``Live`` leaves it open; its Studio thread kept the object, and so the files,
    alive until the process ended.)"""

    def end(self) -> None:
        super().end()
        self.close()

    def close(self) -> None:
        """Close the DVC repository (also after a failed run, which does not end)."""
        repo: Any = self.__dict__.get("_dvc_repo")
        if repo is not None:
            repo.close()
            self._dvc_repo = None  # a later end() has no repository to touch

    def post_data_to_studio(self, *args: Any, **kwargs: Any) -> None:
        if "data" in self._studio_events_to_skip:
            return
        super().post_data_to_studio(*args, **kwargs)
