"""nntune's own executor for DVC's experiment queue (``nntune run``, ``nntune search``).

Workers (:mod:`~nntune.executor.worker`, started and watched by
:mod:`~nntune.executor.pool`) each own a persistent git worktree
(:mod:`~nntune.executor.worktrees`) that shares the project's git refs and DVC cache. A
worker imports DVC once and runs each queued entry in-process through DVC's own reproduce
and commit (:mod:`~nntune.executor.runner`), so the entry ends as the same experiment DVC's
queue workers would make, without their temp clone, celery task and ``exp exec-run``
process per trial. Claims, records and logs (:mod:`~nntune.executor.records`) make a kill
at any moment lose nothing and run nothing twice; :mod:`~nntune.executor.retry` reads the
logs and queues failed trials again.
"""
