"""Multilingual encoders in Flax: BERT / XLM-R with pluggable attention, offline weights.

enc = jxr.model.load_encoder("multilingual-e5-small", attention=AttentionConfig.local(64))
emb = enc.encode(texts, kind="query")        # np.float32 [N, dim], L2-normalised
"""

from jxr.model.api import Encoder, bucket_length, load_encoder, plan_batches
from jxr.model.config import AttentionConfig, EncoderConfig
from jxr.model.encoder import EncoderModel, attention_mask_for, pool
from jxr.model.trim import save_bundle, trim_vocabulary

__all__ = [
    "Encoder",
    "EncoderConfig",
    "AttentionConfig",
    "EncoderModel",
    "load_encoder",
    "attention_mask_for",
    "pool",
    "bucket_length",
    "plan_batches",
    "trim_vocabulary",
    "save_bundle",
]
