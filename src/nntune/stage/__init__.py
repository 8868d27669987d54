"""What DVC's stages run: reading and checking the table, preparing the splits, building
and fitting the Keras model, pretraining, warm starts, evaluation, devices and the atomic
writers of every output.

Every module here is a DVC dependency of the stages that import it (``dvc.yaml`` lists them,
and ``tests/test_layout.py`` checks that the list is exact), so editing one retrains. Code
here imports only ``nntune.config``, ``nntune.errors``, ``nntune.warm.client`` and its own
package: never the orchestration side (CLI, tuning, experiments, backends).
"""
