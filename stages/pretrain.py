"""pretrain: the hidden layers as an autoencoder's encoder (reconstruction loss), when
pretrain.enabled; otherwise it only records that, without importing TensorFlow."""

import argparse
import sys

from nntune.warm.client import handoff

handoff(__name__, select=True)  # the warm runner, on params.yaml's backend
from nntune.stage.backend import select_for_stage

select_for_stage()  # runtime.backend of params.yaml becomes KERAS_BACKEND, before any import

from nntune.config.params import load_params
from nntune.stage import artifacts
from nntune.stage.entry import run_stage
from nntune.stage.quiet import import_keras_quietly


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    if not params.pretrain.enabled:  # each folder replaced whole: no encoder or curves left
        with artifacts.atomic_dir(args.out_dir) as out, artifacts.atomic_dir(args.live_dir) as live:
            artifacts.write_json(out / "info.json", {"enabled": False})
            # DVC warns about an empty output folder: say why it holds no curves.
            artifacts.write_text(live / "OFF", "pretrain.enabled is false\n")
        artifacts.write_json(args.metrics, {"pretrain_epochs": 0})
        return
    import_keras_quietly()  # TensorFlow's start-up lines on fd 2 filtered
    from nntune.stage import device, pretrain
    from nntune.stage.data import read_prepared
    from nntune.stage.training import seed_everything

    used = device.configure(params.runtime)
    print(f"pretraining on {used.name}", file=sys.stderr)
    seed_everything(params.runtime)
    data = read_prepared(args.prepared, splits=("train", "val", "unlabeled"))
    result = pretrain.pretrain_encoder(data, params.model, params.pretrain, args.live_dir)
    pretrain.save(args.out_dir, result.info, result.encoder)
    artifacts.write_json(args.metrics, result.metrics)


if __name__ == "__main__":
    run_stage(main, __doc__, "params", "prepared", "out_dir", "metrics", "live_dir")
