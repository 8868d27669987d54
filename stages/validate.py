"""validate: check the raw table against its pandera schema; a failure stops the pipeline.

Writes the report (JSON) whether or not the data is valid, then exits 1 on failure so DVC
runs nothing downstream.
"""

import argparse
import sys

from nntune.config.params import load_params
from nntune.stage import artifacts
from nntune.stage.entry import run_stage
from nntune.stage.schema import check_data, render_report


def main(args: argparse.Namespace) -> None:
    data = load_params(args.params).data
    report = check_data(data)
    artifacts.write_json(args.report, report.to_dict())
    render_report(report)
    if not report.valid:
        sys.exit(f"validation failed: see the table above and {args.report}")


if __name__ == "__main__":
    run_stage(main, __doc__, "params", "report")
