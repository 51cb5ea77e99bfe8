"""batchmon's benchmark suite: ``python -m bench`` measures scenarios P1-P7 of issue 6,
P8-P9 of issue 13 and P10-P11 of issue 16.

Each scenario runs batchmon's own code against the simulator next to a bare baseline,
interleaved, and :mod:`bench.run` prints one table of figures, ratios and targets.
"""
