"""The project's benchmarks, run from the checkout's root as modules: ``python -m benchmarks.<name>``.

Each writes its results JSON under ``benchmarks/results/`` and, with ``--update-docs``, its section of BENCHMARKS.md;
what they share is in :mod:`benchmarks.common`. Not part of the installed package.
"""

import os

# Set before any benchmark imports torch: the CPU profiler (op tables, memory measurements) is chatty otherwise
os.environ.setdefault("KINETO_LOG_LEVEL", "5")
