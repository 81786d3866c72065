"""Data helpers shared by the plugin models."""

from recbole_ext.data.image_features import ItemImageFeatures, load_item_image_features
from recbole_ext.data.images import ImageDataError, ItemImages, dataset_has_images
from recbole_ext.data.text_features import (
    TextFeatureError,
    build_text_features,
    load_item_text_embeddings,
)

__all__ = [
    "ImageDataError",
    "ItemImageFeatures",
    "ItemImages",
    "TextFeatureError",
    "build_text_features",
    "dataset_has_images",
    "load_item_image_features",
    "load_item_text_embeddings",
]
