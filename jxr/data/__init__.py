"""LAReQA retrieval tasks, training pairs and the hybrid batch sampler."""

from jxr.data.task import RetrievalTask

__all__ = ["RetrievalTask"]
