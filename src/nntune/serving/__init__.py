"""Use the tuned model: predict on raw rows (``predict``, ``nntune predict``) and export a
self-contained model that takes raw columns (``export``, ``card``, ``nntune export``).

Both read the training split's fitted preprocessing that the prepare stage recorded in
``data/prepared/meta.json`` through one reader, ``preprocessing.PreprocessingSpec``; predict
applies it with NumPy (``preprocessing.encode_rows``), export builds it into Keras layers.
Orchestration side: no stage imports this package, so editing it never retrains.
"""
