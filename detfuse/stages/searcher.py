"""One Tune searcher over several search spaces (architectures of both families) in one experiment.

Tune's `num_samples` applies to a single param space; an experiment here has one space per architecture, each
with its own sample count. `MultiSpaceSearcher` hands out trials round-robin across the spaces, so both
families have trials running from the start, and samples each space with its own sub-searcher: seeded random
sampling by default, or any searcher Tune can create by name (e.g. "optuna", "hyperopt") when it is installed.
"""

import pickle

import numpy as np
from ray.tune.search import Searcher

from trainables.trial_config import resolve_trial_config


class SpaceEntry:
    """One search space of the experiment, how many trials it gets, and the settings its trials share."""

    def __init__(self, space, num_samples, settings):
        self.space = space
        self.num_samples = num_samples
        self.settings = settings  # trial config keys set by the experiment: dataset, resources, wandb, ...


class _RandomSampler:
    """Independent samples of a space's Tune domains from a seeded generator (resumable: state is pickled)."""

    def __init__(self, domains, seed):
        self.domains = domains
        self.rng = np.random.default_rng(seed)

    def suggest(self, trial_id):
        return {name: _plain(domain.sample(random_state=self.rng)) for name, domain in self.domains.items()}

    def on_trial_result(self, trial_id, result):
        pass

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def _plain(value):
    """numpy scalars -> Python numbers, so configs stay readable and YAML/JSON friendly."""
    return value.item() if isinstance(value, np.generic) else value


def make_sub_searcher(name, domains, metric, mode, seed):
    """The sampler of one space: 'random' or a Tune searcher by name."""
    if name == "random" or not domains:
        return _RandomSampler(domains, seed)
    from ray.tune.search import create_searcher

    return create_searcher(name, space=domains, metric=metric, mode=mode)


class MultiSpaceSearcher(Searcher):
    def __init__(self, entries, metric="mAP50", mode="max", searcher="random", seed=0):
        super().__init__(metric=metric, mode=mode)
        self.entries = entries
        self.samplers = [make_sub_searcher(searcher, e.space.space, metric, mode, seed + i)
                         for i, e in enumerate(entries)]
        self.issued = [0] * len(entries)
        self.next_entry = 0
        self.seed = seed
        self.trial_entry = {}  # trial id -> entry index

    def set_search_properties(self, metric, mode, config, **spec):
        return True  # metric and mode are fixed by the experiment (mAP50, max)

    def suggest(self, trial_id):
        for _ in range(len(self.entries)):
            index = self.next_entry
            self.next_entry = (self.next_entry + 1) % len(self.entries)
            entry = self.entries[index]
            if self.issued[index] < entry.num_samples:
                hparams = self.samplers[index].suggest(trial_id)
                if hparams is None:  # a sub-searcher may have to wait for results
                    continue
                self.issued[index] += 1
                self.trial_entry[trial_id] = index
                seed = self.seed + 1000 * index + self.issued[index]
                config = entry.space.trial_config(hparams, **entry.settings, seed=seed)
                # defaults filled in and checked once more, so every trial's config is complete and valid
                return resolve_trial_config(config, f"search space {entry.space.path}")
        if all(n >= e.num_samples for n, e in zip(self.issued, self.entries)):
            return Searcher.FINISHED
        return None

    def on_trial_result(self, trial_id, result):
        if trial_id in self.trial_entry:
            self.samplers[self.trial_entry[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self.trial_entry:
            self.samplers[self.trial_entry[trial_id]].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
