"""prepare: stratified train/val/test split, scaling fitted on train only, as Parquet."""

import argparse

from nntune.config.params import load_params
from nntune.stage.artifacts import file_md5
from nntune.stage.data import check_validated, read_table, write_prepared
from nntune.stage.entry import run_stage
from nntune.stage.preprocess import prepare


def main(args: argparse.Namespace) -> None:
    data = load_params(args.params).data
    check_validated(args.validation_report, data.source)
    frame = read_table(data.source, data.delimiter)
    prepared = prepare(frame, data, source_md5=file_md5(data.source))
    write_prepared(prepared, args.out_dir)


if __name__ == "__main__":
    run_stage(main, __doc__, "params", "validation_report", "out_dir")
