"""Prompt templates as data, tokenised so that a length cap shortens the fields, never the fixed text.

A template is a ``string.Template`` text with ``${field}`` slots, e.g. NoteLLM's Note Compression
Prompt ``Note: {"title": "${title}", ...}, compress it into one word: "``; the models keep their
templates in their props YAML. Used by NoteLLM and NoteLLM2 (and the planned LSVCR prompts).
"""

from string import Template


class PromptTemplate:
    """``text`` with ``${field}`` slots; ``truncate_order`` lists the fields a token cap may shorten,
    first shortened first (a field not listed is never cut)."""

    def __init__(self, text, truncate_order=()):
        self.template = Template(text)
        self.fields = set(self.template.get_identifiers())
        unknown = [f for f in truncate_order if f not in self.fields]
        if unknown:
            raise ValueError(f"truncate_order names {unknown}, which the template {text!r} has no slot for.")
        self.truncate_order = list(truncate_order)

    def render(self, values):
        missing = self.fields - set(values)
        if missing:
            raise KeyError(f"prompt fields {sorted(missing)} have no value.")
        return self.template.substitute(values)

    def token_ids(self, tokenizer, values, max_tokens=None):
        """Token ids (no special tokens added) of the rendered prompt, at most ``max_tokens``: the
        fields of ``truncate_order`` lose tokens from their end, in that order, until it fits. The
        whole text is tokenised at once, so an uncut prompt tokenises exactly like ``render``."""
        values = dict(values)
        ids = tokenizer(self.render(values), add_special_tokens=False)["input_ids"]
        for field in self.truncate_order:
            while max_tokens is not None and len(ids) > max_tokens and values[field]:
                field_ids = tokenizer(values[field], add_special_tokens=False)["input_ids"]
                keep = max(0, len(field_ids) - (len(ids) - max_tokens))
                shorter = tokenizer.decode(field_ids[:keep]).strip() if keep else ""
                values[field] = shorter if shorter != values[field] else ""
                ids = tokenizer(self.render(values), add_special_tokens=False)["input_ids"]
        if max_tokens is not None and len(ids) > max_tokens:
            raise ValueError(
                f"max_tokens={max_tokens} is shorter than the prompt's fixed text and uncuttable fields "
                f"({len(ids)} tokens with every cuttable field empty); raise max_tokens."
            )
        return ids
