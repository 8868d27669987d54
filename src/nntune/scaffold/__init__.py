"""``nntune init`` (``project``) and the wheel's build hook (``build``) that packs the
pipeline files ``init`` copies."""
