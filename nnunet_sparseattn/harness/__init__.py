"""The one harness that runs nnU-Net for ``compare``, the demo, the end-to-end tests and the benchmarks.

- ``commands``: nnU-Net's commands as subprocesses (streamed, logged, timed; device and TTA as arguments) and the
  environment they run in;
- ``datasets``: dataset and model folder lookup, held-out cases and their copies, MSD conversion;
- ``budgets``: training budgets and the budgeted, seeded trainers ``<Trainer>_bench<budget>`` with their shim;
- ``scoring``: Dice and HD95 of predicted cases (the one function to swap for the evaluation package);
- ``networks``: a trainer's inference network for a dataset's plans: parameters, FLOPs, attention layout;
- ``trainers``: trainer classes by name, and a trainer built without a preprocessed dataset (tests, benchmarks);
- ``machine``: what a measurement ran on.
"""
