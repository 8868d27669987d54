"""ensemble: the average of the experiments in params' ensemble.members, on the test split
(`nntune ensemble --top K`); empty records when there are none."""

import argparse

from nntune.stage.backend import select_for_stage

select_for_stage()  # runtime.backend of params.yaml becomes KERAS_BACKEND, before any import

from nntune.config.params import load_params
from nntune.stage import artifacts, entry
from nntune.stage.ensemble import evaluate_ensemble, materialise


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    materialise(params.ensemble, args.members)
    metrics, report = evaluate_ensemble(args.prepared, args.members)
    artifacts.write_json(args.metrics, metrics)
    artifacts.write_json(args.report, report)


if __name__ == "__main__":
    entry.run_stage(main, __doc__, "params", "prepared", "members", "metrics", "report")
