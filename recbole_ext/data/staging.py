"""Write a dataset folder completely or not at all (converters and generators: rechorus, kuaicomt,
synthetic_kuaicomt)."""

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def staged_folder(target):
    """Yield a temporary folder beside ``target``; when the block ends normally it replaces ``target``
    (an older one is removed), otherwise it is deleted, so a failure never leaves a half-written folder."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
