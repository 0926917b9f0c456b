"""Contrastive fine-tuning of jxr encoders over a device mesh (docs/DESIGN.md, jxr.train).

    from jxr.train import TrainConfig, train
    result = train(TrainConfig(model="tiny", train_data="xquad-r", steps=100, out_dir="runs/a"))
    result = train(config, resume=True)     # continues after Ctrl-C, same batches

Pieces: `mesh` (meshes, logical sharding rules, multi-host start), `loss`
(InfoNCE over the global batch), `optim` (AdamW schedule), `step` (plain,
accumulated and gradient-cached steps), `checkpoint` (orbax), `metrics`.
"""

from jxr.train.config import TrainConfig, TrainResult
from jxr.train.loss import info_nce
from jxr.train.mesh import make_mesh, maybe_initialize_distributed
from jxr.train.metrics import read_metrics
from jxr.train.trainer import train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "info_nce",
    "make_mesh",
    "maybe_initialize_distributed",
    "read_metrics",
]
