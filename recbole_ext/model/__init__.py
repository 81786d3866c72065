"""Plugin models; each is a RecBole ``SequentialRecommender`` registered on ``import recbole_ext``."""

from recbole_ext.model.frozen_text_i2i import FrozenTextI2I
from recbole_ext.model.like_count_ranker import LikeCountRanker
from recbole_ext.model.lrd import LRD
from recbole_ext.model.lsvcr import LSVCR
from recbole_ext.model.notellm import NoteLLM
from recbole_ext.model.notellm2 import NoteLLM2
from recbole_ext.model.tedrec import TedRec

MODELS = [TedRec, LRD, LSVCR, NoteLLM, NoteLLM2, FrozenTextI2I, LikeCountRanker]

__all__ = ["TedRec", "LRD", "LSVCR", "NoteLLM", "NoteLLM2", "FrozenTextI2I", "LikeCountRanker", "MODELS"]
