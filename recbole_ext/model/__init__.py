"""Plugin models; each is a RecBole ``SequentialRecommender`` registered on ``import recbole_ext``."""

from recbole_ext.model.tedrec import TedRec

MODELS = [TedRec]

__all__ = ["TedRec", "MODELS"]
