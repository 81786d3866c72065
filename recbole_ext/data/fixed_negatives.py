"""Sampled evaluation on fixed, listed negatives (eval mode ``fixed``), through RecBole's evaluator.

Papers built on ReChorus (LRD among them) rank each dev/test positive against its own list of 99
negatives drawn once and shipped with the data. RecBole's ``uni99`` draws new ones, so its numbers
are not on the same candidates. With::

    eval_args: {split: {LS: valid_and_test}, order: TO, group_by: user, mode: {valid: fixed, test: fixed}}
    eval_negatives_field: neg_items     # (str) token_seq column of the .inter file holding the negatives

each evaluated row is scored against the negatives listed on its own ``.inter`` row (the
``recbole_ext.data.rechorus`` converter writes them; keep the column out of ``load_col``). The
phases keep RecBole's ``NegSampleEvalDataLoader``, trainer and metrics: only the sampler is replaced
by a lookup, so ``Hit``/``NDCG``/... are RecBole's own. ``uni100`` and ``full`` stay available, per phase.

Which ``.inter`` row a phase evaluates: among a user's rows that list negatives, in time order (ties
in file order, as RecBole's stable sort), the last is the test row and the one before the
validation row. The lookup checks that these are the very (user, item) rows of RecBole's split and
that every row lists the same number of negatives.

Difference from ReChorus: RecBole scores candidates into a user x item matrix, so a negative listed
twice counts once (ReChorus counts a duplicate twice when it outranks the positive).
"""

import csv
import os

import numpy as np
import torch

MODE = "fixed"
DEFAULT_FIELD = "neg_items"
_PHASES = ("valid", "test")


class FixedNegativesError(ValueError):
    """The fixed negatives are missing or do not line up with RecBole's evaluation rows."""


class FixedNegativeSampler:
    """Stands in for RecBole's sampler in one evaluation phase: returns each user's listed negatives."""

    def __init__(self, phase, positives, negatives):
        self.phase = phase
        self.positives = positives  # [n_users] positive item id of the user's row, -1 without one
        self.negatives = negatives  # [n_users, N] listed negative item ids

    def sample_by_user_ids(self, user_ids, item_ids, num):
        """Negatives in RecBole's layout: ``num`` blocks of ``len(user_ids)`` (block k = k-th negative)."""
        user_ids, item_ids = np.asarray(user_ids), np.asarray(item_ids)
        if num != self.negatives.shape[1]:
            raise FixedNegativesError(f"{num} negatives requested, {self.negatives.shape[1]} listed per row.")
        wrong = self.positives[user_ids] != item_ids
        if wrong.any():
            user = int(user_ids[wrong.argmax()])
            raise FixedNegativesError(
                f"{self.phase}: no fixed negatives for user {user}'s row with item {int(item_ids[wrong.argmax()])} "
                "(listed rows are the last two per user with negatives)."
            )
        return torch.from_numpy(self.negatives[user_ids].T.reshape(-1).copy())


def _read_listed_rows(config, dataset):
    """(users, items, negatives lists) of the ``.inter`` rows that list negatives, as internal ids,
    per user in time order (ties kept in file order)."""
    import pandas as pd

    field = config["eval_negatives_field"] or DEFAULT_FIELD
    path = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    uid, iid, time = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"]
    frame = pd.read_csv(path, sep=config["field_separator"], dtype=str, keep_default_na=False,
                        quoting=csv.QUOTE_NONE, encoding="utf-8")
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    missing = [c for c in (uid, iid, field) if c not in frame.columns]
    if missing:
        raise FixedNegativesError(
            f"Eval mode '{MODE}' reads the negatives from '{path}', which has no column(s) {missing}. Write "
            f"them as a token_seq column (e.g. with `python -m recbole_ext.data.rechorus`) or set "
            "`eval_negatives_field`."
        )
    frame = frame[frame[field] != ""]
    if time in frame.columns:
        frame = frame.assign(_time=frame[time].astype(float)).sort_values([uid, "_time"], kind="stable")
    else:
        frame = frame.sort_values(uid, kind="stable")
    user_ids, item_ids = dataset.field2token_id[uid], dataset.field2token_id[iid]
    separator = config["seq_separator"] or " "
    users, items, negatives = [], [], []
    for user, item, listed in zip(frame[uid], frame[iid], frame[field]):
        if user not in user_ids or item not in item_ids:
            continue  # filtered out by RecBole's own data settings
        tokens = listed.split(separator)
        unknown = [t for t in tokens if t not in item_ids]
        if unknown:
            raise FixedNegativesError(f"'{path}': user {user}'s {field} has items {unknown[:5]} unknown to the dataset.")
        users.append(user_ids[user]), items.append(item_ids[item])
        negatives.append([item_ids[t] for t in tokens])
    counts = {len(n) for n in negatives}
    if len(counts) > 1:
        raise FixedNegativesError(f"'{path}': rows list different numbers of {field}: {sorted(counts)}.")
    return users, items, negatives


def phase_samplers(config, dataset, built_datasets):
    """{phase: FixedNegativeSampler} for the phases whose eval mode is ``fixed``."""
    phases = [p for p in _PHASES if config["eval_args"]["mode"][p] == MODE]
    if not phases:
        return {}
    users, items, negatives = _read_listed_rows(config, dataset)
    if not users:
        field = config["eval_negatives_field"] or DEFAULT_FIELD
        raise FixedNegativesError(f"Eval mode '{MODE}': no .inter row lists any `{field}`.")
    width = len(negatives[0])
    per_user = {}
    for user, item, listed in zip(users, items, negatives):
        per_user.setdefault(user, []).append((item, listed))
    samplers = {}
    for phase in phases:
        offset = 1 if phase == "test" else 2  # the last listed row is the test row, the one before valid
        positives = np.full(dataset.user_num, -1, dtype=np.int64)
        table = np.zeros((dataset.user_num, width), dtype=np.int64)
        for user, rows in per_user.items():
            if len(rows) >= offset:
                positives[user], table[user] = rows[-offset][0], rows[-offset][1]
        phase_data = built_datasets[_PHASES.index(phase) + 1].inter_feat
        phase_users = phase_data[dataset.uid_field].numpy()
        mismatch = positives[phase_users] != phase_data[dataset.iid_field].numpy()
        if mismatch.any():
            user = dataset.id2token(dataset.uid_field, int(phase_users[mismatch.argmax()]))
            raise FixedNegativesError(
                f"Eval mode '{MODE}': RecBole's {phase} row of user {user} is not the row listing its negatives. "
                "Fixed negatives need the leave-one-out split they were drawn for: `eval_args: {split: "
                "{LS: valid_and_test}, order: TO, group_by: user}`, data written in time order."
            )
        samplers[phase] = FixedNegativeSampler(phase, positives, table)
        config[f"{phase}_neg_sample_args"] = {"distribution": "uniform", "sample_num": width}
    return samplers


def install():
    """Teach RecBole's ``Config`` the eval mode ``fixed`` and swap in the lookup sampler for its phases."""
    import recbole.data.utils as data_utils
    from recbole.config import Config

    if getattr(data_utils.create_samplers, "__recbole_ext_fixed__", False):
        return
    set_eval_args = Config._set_eval_neg_sample_args

    def _set_eval_neg_sample_args(self, phase):
        if self.final_config_dict["eval_args"]["mode"][phase] != MODE:
            return set_eval_args(self, phase)
        # the number comes from the data: phase_samplers sets it before the dataloaders exist
        self.final_config_dict[f"{phase}_neg_sample_args"] = {"distribution": "uniform", "sample_num": None}

    create_samplers = data_utils.create_samplers

    def create_samplers_with_fixed(config, dataset, built_datasets):
        samplers = dict(zip(("train", "valid", "test"), create_samplers(config, dataset, built_datasets)))
        samplers.update(phase_samplers(config, dataset, built_datasets))
        return samplers["train"], samplers["valid"], samplers["test"]

    create_samplers_with_fixed.__recbole_ext_fixed__ = True
    Config._set_eval_neg_sample_args = _set_eval_neg_sample_args
    data_utils.create_samplers = create_samplers_with_fixed
