"""Trainers shared by the plugin models (registered through RecBole's ``<Model>Trainer`` name hook)."""

import itertools

from recbole.trainer import Trainer


class _FirstBatches:
    """The first ``n`` batches of a RecBole dataloader; everything else is the loader's own."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self):
        return min(self.n, len(self.loader))

    def __getattr__(self, name):
        return getattr(self.loader, name)


class BudgetTrainer(Trainer):
    """RecBole's Trainer with an optional cap ``train_batches_per_epoch`` on the batches of each
    training epoch (the loader reshuffles every epoch, so each epoch sees a fresh random subset).
    LLM-backed models need it on CPU, where one pass over ml-100k's training rows takes hours."""

    def __init__(self, config, model):
        super().__init__(config, model)
        budget = config["train_batches_per_epoch"]
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise ValueError(f"train_batches_per_epoch must be a positive integer or ~, got {budget!r}.")
        self.train_batches_per_epoch = budget

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self.train_batches_per_epoch is not None:
            train_data = _FirstBatches(train_data, self.train_batches_per_epoch)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
