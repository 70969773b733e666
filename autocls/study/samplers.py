"""The sampler that proposes configurations; the pruner that stops losing trials is in :mod:`autocls.study.pruning`."""

from __future__ import annotations

import optuna


def make_sampler(seed: int, kind: str = "tpe") -> optuna.samplers.BaseSampler:
    """The search's sampler, by name (``tpe`` or ``random``), seeded."""
    # Multivariate TPE models the dimensions jointly; group=True splits the conditional space
    # (momentum only under SGD, warmup only under cosine) into the sub-spaces that co-occur, so a
    # conditional dimension is modelled only with the trials that had it. constant_liar keeps
    # parallel workers from all proposing the same point while their trials run.
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
