"""Configuration that stages and orchestration share: the params loader and its typed
sections, the metric names and the :class:`~nntune.config.metrics.Objective`, and the
mapping between nested params and dotted overrides. Stage-side: a DVC dependency."""
