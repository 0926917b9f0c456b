"""jxr: cross-lingual retrieval under sparse attention."""
