"""train: the model from params (hidden layers from the pretrained encoder when
pretrain.enabled, or the parent's model continued when train.warm_start is set), early
stopping, dvclive curves; metrics and timings in separate files."""

import argparse
import sys

from nntune.warm.client import handoff

handoff(__name__, select=True)  # the warm runner, on params.yaml's backend
from nntune.stage.backend import select_for_stage

select_for_stage()  # runtime.backend of params.yaml becomes KERAS_BACKEND, before any import

from nntune.stage.quiet import import_keras_quietly

import_keras_quietly()  # before any module that imports Keras; TF's start-up lines filtered
from nntune.config.params import load_params
from nntune.stage import artifacts, device, entry, lineage, pretrain, warmstart
from nntune.stage.data import read_prepared
from nntune.stage.training import fit, seed_everything


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    used = device.configure(params.runtime)
    print(f"training on {used.name}", *used.notes, sep="\n  ", file=sys.stderr)
    seed_everything(params.runtime)
    data = read_prepared(args.prepared, splits=("train", "val"))
    encoder = pretrain.load(args.pretrained, params.model)
    with device.distribution_scope(params.runtime):
        net, frozen = warmstart.starting_model(args.init, params, data, encoder)
    result = fit(
        net, data, params.train, args.live_dir, seed=params.runtime.seed, frozen=frozen,
        freeze_epochs=params.pretrain.freeze_epochs, initial_epoch=params.train.warm_start.epochs,
        save_last=lambda last: artifacts.save_model(last, args.last),
    )  # fmt: skip
    artifacts.save_model(net, args.model)
    artifacts.write_json(args.metrics, result.metrics)
    artifacts.write_json(args.run_info, lineage.run_info(result, used, data))


if __name__ == "__main__":
    paths = ("prepared", "pretrained", "init", "model", "last", "metrics", "run_info", "live_dir")
    entry.run_stage(main, __doc__, "params", *paths)
