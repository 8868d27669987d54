"""train: build the model from params, fit with early stopping, log curves with dvclive.

Metrics (deterministic) and timings (not) go to separate files.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nntune import artifacts, lineage
from nntune.data import read_prepared
from nntune.model import build_model
from nntune.params import load_params
from nntune.stage import run_stage
from nntune.training import fit, seed_everything


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    seed_everything(params.runtime)
    data = read_prepared(args.prepared, splits=("train", "val"))
    net = build_model(
        params.model, params.train, len(data.features), data.task, n_classes=len(data.classes)
    )
    result = fit(net, data, params.train, args.live_dir)
    with artifacts.atomic_path(args.model) as tmp:
        net.save(tmp)
    artifacts.write_json(args.metrics, result.metrics)
    artifacts.write_json(args.run_info, lineage.run_info(result))


if __name__ == "__main__":
    run_stage(main, __doc__, "params", "prepared", "model", "metrics", "run_info", "live_dir")
