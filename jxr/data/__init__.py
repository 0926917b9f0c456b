"""LAReQA retrieval tasks, training pairs and the hybrid batch sampler.

```python
task = jxr.data.load_lareqa("xquad-r")               # or "mlqa-r"
train_task, eval_task = jxr.data.split_by_article(task, eval_fraction=0.5, seed=0)
small = jxr.data.restrict(task, languages=("en", "de"), questions=200, seed=0)
pairs = jxr.data.training_pairs(train_task)           # or jxr.data.read_pairs("pairs.jsonl")
sampler = jxr.data.HybridSampler(pairs, batch_size=64, mono_prob=0.5, seed=0)
arrays = jxr.data.collate(next(sampler), tokenizer, 64, 256)
```

The TFDS builder lives in `jxr.data.tfds_lareqa` (optional `tfds` extra).
"""

from jxr.data.collate import TokenizedBatch, collate
from jxr.data.download import DownloadError
from jxr.data.lareqa import LANGUAGES, default_data_dir, load_lareqa
from jxr.data.pairs import TrainingPairs, read_pairs, training_pairs
from jxr.data.sampler import Batch, HybridSampler
from jxr.data.splits import restrict, split_by_article
from jxr.data.task import RetrievalTask

__all__ = [
    "LANGUAGES",
    "Batch",
    "DownloadError",
    "HybridSampler",
    "RetrievalTask",
    "TokenizedBatch",
    "TrainingPairs",
    "collate",
    "default_data_dir",
    "load_lareqa",
    "read_pairs",
    "restrict",
    "split_by_article",
    "training_pairs",
]
