"""batchmon's benchmark suite: ``python -m bench`` measures scenarios P1-P7 of issue 6.

Each scenario runs batchmon's own code against the simulator next to a bare baseline,
interleaved, and :mod:`bench.run` prints one table of figures, ratios and targets.
"""
