"""Check RecBole atomic files (``.inter``, ``.item``, ``.user``, ``.kg``, ``.link``, ...) before
RecBole's loader reads them, so a malformed file fails with its name, line and column.

RecBole reads each file with pandas, which pads a short row with missing values, skips blank lines
and fails on a non-numeric ``float`` value without saying where. Before each file is loaded
(``Dataset._load_feat``, whatever dataset class the model uses) this checks that

* every line has as many separator-delimited values as the header (blank lines are allowed only
  at the end of the file);
* every value of a ``float`` / ``float_seq`` column that the run loads parses as a number (an
  empty value is RecBole's missing value and is allowed);
* the interaction file holds ``TIME_FIELD`` (and ``load_col`` keeps it) when the run orders
  interactions by time (``eval_args`` order ``TO``, and every sequential model).

Fields are split on ``field_separator`` only: a value that quotes a separator is not supported.
"""

import csv
import functools

_NUMERIC = ("float", "float_seq")


class AtomicFileError(ValueError):
    """An atomic file does not have the layout its header declares."""


def check_atomic_file(path, field_separator="\t", seq_separator=" ", encoding="utf-8", loaded_fields=None):
    """Raise :class:`AtomicFileError` at the first malformed line of ``path``.

    ``loaded_fields``: names of the columns the run loads (numbers are only checked there);
    None means every column."""
    with open(path, encoding=encoding) as f:
        header = f.readline().rstrip("\r\n").split(field_separator)
        separators = len(header) - 1
        blank_line = None
        for line_number, line in enumerate(f, start=2):
            if line.count(field_separator) == separators and blank_line is None and (separators or line.strip()):
                continue  # the common case, checked without splitting the line
            text = line.rstrip("\r\n")
            if not text:
                blank_line = blank_line or line_number
                continue
            if blank_line:
                raise AtomicFileError(
                    f"{path}, line {blank_line}: blank line inside the file (RecBole would skip it silently). "
                    "Remove it, or restore the row that should be there."
                )
            values = text.split(field_separator)
            raise AtomicFileError(
                f"{path}, line {line_number}: {len(values)} values but the header has {len(header)} columns "
                f"({field_separator!r}-separated: {', '.join(header)}). "
                f"{'A value is missing' if len(values) < len(header) else 'There is an extra value'}: "
                "fix the row, or the header."
            )
    numeric = [
        (index, column) for index, column in enumerate(header)
        if column.partition(":")[2] in _NUMERIC and (loaded_fields is None or column.partition(":")[0] in loaded_fields)
    ]
    if numeric:
        _check_numbers(path, field_separator, seq_separator, encoding, numeric)


def _check_numbers(path, field_separator, seq_separator, encoding, numeric):
    """Every value of the ``numeric`` (index, column) columns parses as a number ('' is missing)."""
    import pandas as pd

    read = functools.partial(
        pd.read_csv, path, sep=field_separator, quoting=csv.QUOTE_NONE, encoding=encoding, engine="c",
    )  # rows follow the file's lines: blank lines can only trail (checked above) and are skipped
    floats = [column for _, column in numeric if not column.endswith("_seq")]
    if floats:
        try:
            read(usecols=floats, dtype={column: "float64" for column in floats})
            numeric = [(index, column) for index, column in numeric if column not in floats]
        except ValueError:
            pass  # find the value below
    if not numeric:
        return
    frame = read(usecols=[column for _, column in numeric], dtype=str, na_filter=False)
    for index, column in numeric:
        for row, value in enumerate(frame[column]):
            parts = value.split(seq_separator) if column.endswith("_seq") else [value]
            if all(_is_number(part) for part in parts if part.strip()):
                continue
            label = "token_seq" if column.endswith("_seq") else "token"
            raise AtomicFileError(
                f"{path}, line {row + 2}, column {index + 1} ({column}): {value!r} is not a number. Fix the "
                f"value, or declare the column as '{column.partition(':')[0]}:{label}' if it is a label."
            )


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header_fields(path, field_separator, encoding):
    with open(path, encoding=encoding) as f:
        return [column.partition(":")[0] for column in f.readline().rstrip("\r\n").split(field_separator)]


def check_time_field(path, config, loaded_fields):
    """Raise :class:`AtomicFileError` when the run orders by time but ``path`` gives no time field."""
    from recbole.utils import ModelType

    time_field = config["TIME_FIELD"]
    order = (config["eval_args"] or {}).get("order")
    sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    if not time_field or not (sequential or order == "TO"):
        return
    why = "sequential models order each user's history by time" if sequential else "eval_args order 'TO' sorts by time"
    fields = _header_fields(path, config["field_separator"], config["encoding"])
    if time_field not in fields:
        raise AtomicFileError(
            f"{path} has no '{time_field}' column (TIME_FIELD), and this run needs one: {why}. Its columns: "
            f"{', '.join(fields)}. Add a '{time_field}:float' column, or set TIME_FIELD to the file's time "
            f"column (e.g. --TIME_FIELD=ts) and list that column in load_col (e.g. load_col: {{inter: "
            f"[user_id, item_id, ts]}})."
        )
    if time_field not in loaded_fields:
        raise AtomicFileError(
            f"load_col leaves out '{time_field}' (TIME_FIELD) of {path}, and this run needs it: {why}. "
            f"Add it to load_col (e.g. load_col: {{inter: [{', '.join(sorted(loaded_fields))}, {time_field}]}})."
        )


def install():
    """Check each atomic file in ``Dataset._load_feat``, before RecBole reads it."""
    from recbole.data.dataset import Dataset
    from recbole.utils import FeatureSource

    original = Dataset._load_feat
    if getattr(original, "__recbole_ext_checks__", False):
        return

    @functools.wraps(original)
    def _load_feat(self, filepath, source):
        load_col, unload_col = self._get_load_and_unload_col(source)
        if load_col != set():
            fields = _header_fields(filepath, self.config["field_separator"], self.config["encoding"])
            loaded = {f for f in fields if (load_col is None or f in load_col) and f not in (unload_col or ())}
            check_atomic_file(
                filepath, self.config["field_separator"], self.config["seq_separator"] or " ",
                self.config["encoding"], loaded,
            )
            if source == FeatureSource.INTERACTION:
                check_time_field(filepath, self.config, loaded)
        return original(self, filepath, source)

    _load_feat.__recbole_ext_checks__ = True
    Dataset._load_feat = _load_feat
