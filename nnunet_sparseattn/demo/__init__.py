"""The embedded demo: a synthetic 3D dataset and the plan -> train -> predict -> evaluate walk-through."""

DEMO_DATASET_ID = 990  # here, not in dataset.py: the CLI's help reads it without importing numpy and scipy
