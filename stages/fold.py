"""fold: one fold of cross-validation (data.cv_folds): the params' model trained on the other
folds of the train + validation rows, early-stopped on this one; its validation metrics and
its out-of-fold predictions. The test split is never read."""

import argparse

from nntune.warm.client import handoff

handoff(__name__, "sklearn", select=True)  # the warm runner, on params.yaml's backend
from nntune.stage.backend import select_for_stage

select_for_stage()  # runtime.backend of params.yaml becomes KERAS_BACKEND, before any import

from nntune.stage.quiet import import_keras_quietly

import_keras_quietly()  # before any module that imports Keras; TF's start-up lines filtered
from nntune.config.params import load_params
from nntune.stage import artifacts, device, entry
from nntune.stage.crossval import run_fold
from nntune.stage.data import check_validated, read_table


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    check_validated(args.validation_report, params.data.source)
    device.configure(params.runtime)
    frame = read_table(params.data.source, params.data.delimiter)
    result = run_fold(params, frame, int(args.fold))
    artifacts.write_parquet(args.predictions, result.predictions)
    artifacts.write_json(args.metrics, result.record)


if __name__ == "__main__":
    entry.run_stage(main, __doc__, "params", "validation_report", "fold", "metrics", "predictions")
