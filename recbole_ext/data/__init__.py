"""Data helpers shared by the plugin models."""

from recbole_ext.data.text_features import (
    TextFeatureError,
    build_text_features,
    load_item_text_embeddings,
)

__all__ = ["TextFeatureError", "build_text_features", "load_item_text_embeddings"]
