"""Who runs the trials in DVC's queue: DVC's own workers on this machine (``local``), Ray
tasks (``ray``), one clone per trial (``trial``, the entry point Ray and Slurm call) and
Slurm job arrays (``slurm``); ``view`` is the live progress view they share."""
