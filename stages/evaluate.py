"""evaluate: the only stage that touches the test split. Test metrics and plot rows."""

import argparse

from nntune.warm.client import handoff

handoff(__name__, "sklearn", select=True)  # the warm runner, on params.yaml's backend
from nntune.stage.backend import select_for_stage

select_for_stage()  # runtime.backend of params.yaml becomes KERAS_BACKEND, before any import

from nntune.stage.quiet import filter_tf_noise

with filter_tf_noise():  # TensorFlow's start-up lines on fd 2, which TF_CPP_* leaves
    import keras

from nntune.stage import artifacts
from nntune.stage.data import read_prepared
from nntune.stage.entry import run_stage
from nntune.stage.evaluate import evaluate_predictions
from nntune.stage.outputs import raw_output


def main(args: argparse.Namespace) -> None:
    data = read_prepared(args.prepared, splits=("test",))
    x_test, y_test = data.xy("test")
    with filter_tf_noise():  # its first op starts TensorFlow's runtime: cuInit's failure
        net = keras.saving.load_model(args.model, compile=False)  # predictions only
    output = raw_output(net, x_test)  # no predict function traced for one call
    metrics, predictions = evaluate_predictions(data, y_test, output)
    artifacts.write_json(args.metrics, metrics)
    artifacts.write_csv(args.predictions, predictions)


if __name__ == "__main__":
    run_stage(main, __doc__, "params", "prepared", "model", "metrics", "predictions")
