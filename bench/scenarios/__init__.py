"""The scenarios of the benchmark, one module per group; :mod:`.common` holds what they share."""
