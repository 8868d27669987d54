"""warmstart: the parent experiment's model (train.warm_start), copied out of DVC's cache
by its md5, for train to continue; only {"enabled": false} when training from scratch."""

import argparse

from nntune.warm.client import handoff

handoff(__name__, select=True)  # the warm runner, on params.yaml's backend
from nntune.stage.backend import select_for_stage

select_for_stage()  # runtime.backend of params.yaml becomes KERAS_BACKEND, before any import

from nntune.config.params import load_params
from nntune.stage import warmstart
from nntune.stage.entry import run_stage


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    warmstart.materialise(params.train.warm_start, args.out_dir)


if __name__ == "__main__":
    run_stage(main, __doc__, "params", "out_dir")
