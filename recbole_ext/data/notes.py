"""Items as NoteLLM "notes": title, topics (hashtags), content and category from a ``.item`` file.

NoteLLM and NoteLLM-2 write each item into a Note Compression Prompt with the fields of a
Xiaohongshu note (``shared/specs/notellm.md`` §1.1, §5.3). :func:`read_notes` maps a RecBole
dataset's ``.item`` fields onto them, per internal item id: ``title_field`` (cut to
``max_title_chars``), ``hashtag_field`` (a ``token_seq`` field split on ``seq_separator``, de-duplicated,
at most ``max_hashtags``), ``content_field`` (cut to ``max_content_chars``) and ``category_field``
(never part of the input; ``category_transform: decade`` turns ``1995`` into ``1990s``). A field set
to ``~`` gives empty values. Used by NoteLLM and NoteLLM2.
"""

import os
from logging import getLogger

from recbole_ext.data.text_features import TextFeatureError, read_atomic_header, read_item_fields

CATEGORY_TRANSFORMS = ("none", "decade")
NOTE_FIELDS = ("title", "hashtag", "content", "category")


def note_category(value, transform):
    """The category string of a raw ``category_field`` value under ``category_transform``."""
    if transform == "decade":
        return f"{value[:3]}0s" if len(value) == 4 and value.isdigit() else ""
    return value


def read_notes(config, dataset, model_name):
    """[None] + one dict(title, tags, content, category) per internal item id of ``dataset``.

    Items of the interactions without a row in the ``.item`` file get an empty note (counted in one
    warning). Raises :class:`TextFeatureError` naming the fix when the file or a configured field is
    missing, and ``ValueError`` when the category field is also an input field (CSFT would copy it)."""
    item_file = os.path.join(config["data_path"], f"{config['dataset']}.item")
    fields = {k: config[f"{k}_field"] for k in NOTE_FIELDS}
    if not os.path.isfile(item_file):
        raise TextFeatureError(
            f"{model_name} needs item text but '{item_file}' is missing. Add a '.item' file with a title "
            "field (and optionally hashtag/content/category fields) and name them in `title_field` etc."
        )
    transform = config["category_transform"] or "none"
    if transform not in CATEGORY_TRANSFORMS:
        raise ValueError(f"category_transform must be one of {CATEGORY_TRANSFORMS}, got {transform!r}.")
    header = list(read_atomic_header(item_file, config["field_separator"]))
    wanted = [f for f in fields.values() if f]
    missing = [f for f in wanted if f not in header]
    if not fields["title"] or missing:
        raise TextFeatureError(
            f"'{item_file}' has no field(s) {missing or ['(title_field unset)']}; its fields are "
            f"{header}. Set `title_field`, `hashtag_field`, `content_field` (and `category_field`) to them (or ~)."
        )
    if fields["category"] and fields["category"] in (fields["title"], fields["hashtag"], fields["content"]):
        raise ValueError("category_field must not also be an input field: CSFT would just copy it.")
    frame = read_item_fields(item_file, config["ITEM_ID_FIELD"], list(dict.fromkeys(wanted)),
                             config["field_separator"])
    rows = {token: row for token, row in zip(frame[config["ITEM_ID_FIELD"]], frame.to_dict("records"))}
    separator = config["seq_separator"] or " "
    notes, absent = [None], 0
    for token in dataset.field2id_token[config["ITEM_ID_FIELD"]][1:]:
        row = rows.get(token)
        absent += row is None
        row = row or {}
        tags = [t for t in row.get(fields["hashtag"], "").split(separator) if t] if fields["hashtag"] else []
        notes.append({
            "title": row.get(fields["title"], "")[: config["max_title_chars"]],
            "tags": list(dict.fromkeys(tags))[: config["max_hashtags"]],
            "content": row.get(fields["content"], "")[: config["max_content_chars"]] if fields["content"] else "",
            "category": note_category(row.get(fields["category"], ""), transform) if fields["category"] else "",
        })
    if absent:
        getLogger().warning(f"{absent} items of the interactions are not in '{item_file}' and get an empty note.")
    return notes
