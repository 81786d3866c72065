"""Item images named by a path column of a dataset's ``.item`` atomic file.

The column (default ``image_path:token``) holds a path per item, relative to ``image_root`` (default:
the dataset folder, i.e. RecBole's ``data_path``) or absolute; an empty value means "no image".
The paths are read straight from the ``.item`` file, outside RecBole's field pipeline, so the column
works whether or not ``load_col`` lists it and is never remapped or normalised (``normalize_all``
only touches float fields, but the features computed from the images never enter the pipeline either).

A missing or unreadable file is not an error mid-epoch: as in the official NoteLLM-2 code, the item
gets the zero image (zeros after normalisation, ``shared/specs/notellm.md`` §2.1). Missing files are
counted and logged once when the paths are read; unreadable ones are counted as they are met, the
first one logged with its error, and :meth:`ItemImages.log_summary` reports the totals.
A column that names no existing file at all is a configuration error and raises
:class:`ImageDataError` naming the folder that was searched.
"""

import os
from logging import getLogger

import torch

from recbole_ext.data.text_features import read_atomic_header, read_item_fields

DEFAULT_IMAGE_FIELD = "image_path"


class ImageDataError(ValueError):
    """A dataset's image column, its files or an image feature cache do not fit the config."""


def read_item_image_paths(item_file, item_field, image_field=DEFAULT_IMAGE_FIELD, field_separator="\t"):
    """(item tokens, raw path strings) from the ``image_field`` column of an ``.item`` file."""
    if not os.path.isfile(item_file):
        raise ImageDataError(
            f"No item file '{item_file}': item images are read from an '{image_field}:token' column "
            "there. Add one, or run the model without images."
        )
    field_types = read_atomic_header(item_file, field_separator)
    if image_field not in field_types:
        raise ImageDataError(
            f"'{item_file}' has no '{image_field}' column (columns: {list(field_types)}). Add "
            f"`{image_field}:token` with one image path per item, or set `image_field` to the column "
            "that holds them."
        )
    if item_field not in field_types:
        raise ImageDataError(f"'{item_file}' has no '{item_field}' column (ITEM_ID_FIELD).")
    frame = read_item_fields(item_file, item_field, [image_field], field_separator)
    return frame[item_field].tolist(), frame[image_field].tolist()


def dataset_has_images(config):
    """Whether the dataset's ``.item`` file has the ``image_field`` column (to fall back to text only)."""
    item_file = os.path.join(config["data_path"], f"{config['dataset']}.item")
    field = config["image_field"] or DEFAULT_IMAGE_FIELD
    return os.path.isfile(item_file) and field in read_atomic_header(item_file, config["field_separator"] or "\t")


class ItemImages:
    """Image files of items in a fixed order (row ``i`` = item ``tokens[i]``; ``None`` = no image).

    Build it with :meth:`from_item_file` (rows in file order) or :meth:`from_dataset` (rows aligned to
    RecBole's internal item ids, row 0 = padding). Decoding never raises: a missing or unreadable image
    comes back as ``None`` and is counted in ``missing`` / ``unreadable`` (sets of row indices).
    """

    def __init__(self, tokens, paths, image_root, source="images", padding_row=False, image_field=DEFAULT_IMAGE_FIELD):
        self.image_field = image_field
        self.padding_row = padding_row  # row 0 is RecBole's padding item, not counted
        self.tokens = list(tokens)
        self.paths = list(paths)
        self.image_root = image_root
        self.source = source
        self.without_path = {i for i, p in enumerate(self.paths) if p is None}
        self.missing = {i for i, p in enumerate(self.paths) if p is not None and not os.path.isfile(p)}
        self.unreadable = set()

    def _check_files(self):
        """Raise when no path names an existing file; log the missing ones once."""
        named = len(self.paths) - len(self.without_path)
        if not named:
            raise ImageDataError(f"The image column of {self.source} is empty for every item; fill it or run without images.")
        examples = [self.paths[i] for i in sorted(self.missing)[:3]]
        if len(self.missing) == named:
            raise ImageDataError(
                f"None of the {named} image paths in {self.source} names an existing file (looked under "
                f"image_root '{self.image_root}', e.g. {examples}). Set `image_root` to the folder the "
                "paths are relative to."
            )
        if self.missing:
            getLogger().warning(
                f"{len(self.missing)} of {named} image files named in {self.source} do not exist "
                f"(e.g. {examples}); those items get the zero image."
            )

    @classmethod
    def from_item_file(cls, item_file, image_root=None, item_field="item_id", image_field=DEFAULT_IMAGE_FIELD,
                       field_separator="\t"):
        """Rows in ``.item`` file order; relative paths resolve against ``image_root`` (default: the file's folder)."""
        tokens, raw = read_item_image_paths(item_file, item_field, image_field, field_separator)
        root = image_root or os.path.dirname(os.path.abspath(item_file))
        paths = [os.path.join(root, p) if p else None for p in raw]  # join keeps absolute paths as they are
        images = cls(tokens, paths, root, f"'{item_file}' column '{image_field}'", image_field=image_field)
        images._check_files()
        return images

    @classmethod
    def from_dataset(cls, config, dataset):
        """Rows aligned to ``dataset``'s internal item ids (row 0 = padding, ``None``).

        Reads ``image_field`` (default ``image_path``), ``image_root`` (default ``data_path``) and
        ``field_separator`` from ``config``; items absent from the ``.item`` file get no image."""
        item_field = config["ITEM_ID_FIELD"]
        item_file = os.path.join(config["data_path"], f"{config['dataset']}.item")
        by_file = cls.from_item_file(
            item_file, config["image_root"] or config["data_path"], item_field,
            config["image_field"] or DEFAULT_IMAGE_FIELD, config["field_separator"] or "\t",
        )
        path_of = dict(zip(by_file.tokens, by_file.paths))
        tokens = list(dataset.field2id_token[item_field])
        paths = [None] + [path_of.get(str(t)) for t in tokens[1:]]
        absent = sum(1 for t in tokens[1:] if str(t) not in path_of)
        if absent:
            getLogger().warning(f"{absent} items of the dataset have no row in '{item_file}'; they get the zero image.")
        return cls(tokens, paths, by_file.image_root, by_file.source, True, by_file.image_field)

    def __len__(self):
        return len(self.paths)

    def load(self, index):
        """The decoded RGB ``PIL.Image`` of row ``index``, or ``None`` (no path, missing or unreadable)."""
        from PIL import Image

        path = self.paths[index]
        if path is None or index in self.missing or index in self.unreadable:
            return None
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            if not self.unreadable:
                getLogger().warning(
                    f"Cannot decode image '{path}' ({type(error).__name__}: {error}); it and any further "
                    "unreadable image get the zero image (counted, see the summary)."
                )
            self.unreadable.add(index)
            return None

    def pixel_values(self, indices, preprocess):
        """Preprocessed images of rows ``indices``: float [N, 3, S, S], the zero image where there is none."""
        images = [self.load(int(i)) for i in indices]
        return torch.stack([preprocess(im) if im is not None else preprocess.zero_image() for im in images])

    def counts(self):
        """{'items', 'without_path', 'missing', 'unreadable'} (padding row not counted)."""
        padding = int(self.padding_row)
        return {"items": len(self.paths) - padding, "without_path": len(self.without_path) - padding,
                "missing": len(self.missing), "unreadable": len(self.unreadable)}

    def log_summary(self):
        counts = self.counts()
        zero = counts["without_path"] + counts["missing"] + counts["unreadable"]
        log = getLogger().warning if zero else getLogger().info
        log(f"Images of {self.source}: {counts['items']} items, {zero} with the zero image "
            f"({counts['without_path']} without a path, {counts['missing']} missing, {counts['unreadable']} unreadable).")
        return counts
