"""Trainers shared by the plugin models (registered through RecBole's ``<Model>Trainer`` name hook)."""

import itertools

from recbole.trainer import Trainer

LR_SCHEDULERS = ("constant", "linear_warmup")


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
    LLM-backed models need it on CPU, where one pass over ml-100k's training rows takes hours.
    Used by NoteLLM and FrozenTextI2I."""

    def __init__(self, config, model):
        super().__init__(config, model)
        budget = config["train_batches_per_epoch"]
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise ValueError(f"train_batches_per_epoch must be a positive integer or ~, got {budget!r}.")
        self.train_batches_per_epoch = budget

    def _batches_per_epoch(self, train_data):
        return len(train_data) if self.train_batches_per_epoch is None else min(self.train_batches_per_epoch,
                                                                                len(train_data))

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self.train_batches_per_epoch is not None:
            train_data = _FirstBatches(train_data, self.train_batches_per_epoch)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)


class LLMTrainer(BudgetTrainer):
    """:class:`BudgetTrainer` for a pretrained LLM next to freshly initialised modules.

    * ``learning_rates``: ``{parameter-name prefix: learning rate}``; a parameter takes the rate of its
      longest matching prefix, else ``learning_rate`` (e.g. a random connector at 1e-4 beside an LLM
      at 1e-5). Frozen parameters are left out of the optimizer.
    * ``lr_scheduler: linear_warmup``: the rate rises linearly over the first ``warmup_ratio`` of all
      training steps, then decays linearly to 0 at the last (``transformers``' schedule), stepped
      after every optimizer step, and picked up where it was when training resumes at a later epoch;
      ``constant`` keeps RecBole's fixed rate.

    Used by NoteLLM and NoteLLM2.
    """

    def __init__(self, config, model):
        self.learning_rates = dict(config["learning_rates"] or {})
        self.lr_scheduler = config["lr_scheduler"] or "constant"
        self.warmup_ratio = config["warmup_ratio"] or 0.0
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio!r}.")
        for prefix, rate in self.learning_rates.items():
            if not isinstance(rate, (int, float)) or rate <= 0:
                raise ValueError(f"learning_rates[{prefix!r}] must be a positive number, got {rate!r}.")
        names = [name for name, _ in model.named_parameters()]
        unused = [p for p in self.learning_rates if not any(n.startswith(p) for n in names)]
        if unused:
            raise ValueError(f"learning_rates names {unused}, which match no parameter of {type(model).__name__}.")
        self._schedule_hook = None
        super().__init__(config, model)

    def parameter_groups(self):
        """[{params, lr}] of the trainable parameters, one group per learning rate."""
        groups = {}
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            matches = [p for p in self.learning_rates if name.startswith(p)]
            rate = self.learning_rates[max(matches, key=len)] if matches else self.learning_rate
            groups.setdefault(rate, []).append(parameter)
        return [{"params": params, "lr": rate} for rate, params in groups.items()]

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", self.parameter_groups())
        return super()._build_optimizer(**kwargs)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.lr_scheduler == "linear_warmup":
            from transformers import get_linear_schedule_with_warmup

            total = max(1, self.epochs * self._batches_per_epoch(train_data))
            done = self.start_epoch * self._batches_per_epoch(train_data)  # steps taken before a resume
            for group in self.optimizer.param_groups:  # a resumed optimizer keeps the first run's initial_lr
                group.setdefault("initial_lr", group["lr"])
            schedule = get_linear_schedule_with_warmup(self.optimizer, int(self.warmup_ratio * total), total,
                                                       last_epoch=done - 1)
            if self._schedule_hook is not None:
                self._schedule_hook.remove()
            self._schedule_hook = self.optimizer.register_step_post_hook(lambda *_: schedule.step())
            self.lr_schedule = schedule
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
