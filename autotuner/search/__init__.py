"""Finding and choosing the best config: the space and its Optuna suggestions, the samplers,
the ask/tell driver, the proposals that make the budget count measurements, the pooled estimates,
the race between contenders, and the pick with its statistics.
"""
