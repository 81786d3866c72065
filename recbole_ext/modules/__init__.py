"""Building blocks shared by the plugin models; no module here imports a model.

``layers`` (TedRec's MoE adapter and frequency fusion), ``fused_attention`` (LRD's CPU kernel),
``contrastive`` (InfoNCE), ``i2i`` (item-to-item serving), ``llm`` (offline causal LLMs),
``vision`` (frozen image encoders), ``connector`` (Q-Former from vision tokens to an LLM).
"""
