"""The network speed benchmark's parts; ``python -m benchmarks.network_speed`` is its command.

- :mod:`benchmarks.speed.measure`: plans, networks, nnU-Net's training step, and one plan measured in rounds
- :mod:`benchmarks.speed.before`: ``--before``, the networks of another commit timed by a worker process
- :mod:`benchmarks.speed.report`: the Markdown tables and BENCHMARKS.md's network-speed section
"""
