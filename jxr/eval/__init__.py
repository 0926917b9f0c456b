"""Evaluation as pure functions of embeddings: LAReQA mAP, language matrices, bias, reports.

```python
report = jxr.eval.evaluate(task, query_emb, cand_emb)   # plain dict, see jxr.eval.evaluate
pools = jxr.eval.evaluate_pools(task, query_emb, cand_emb, {"2": ("en", "de"), "4": ("en", "de", "ru", "zh")})
jxr.eval.write_report(report, "out/")                   # json, csv, png heatmaps, summary.md
jxr.eval.compare({"dense": r1, "local": r2}, "cmp/")     # side-by-side tables and a plot
jxr.eval.write_trec(task, query_emb, cand_emb, "out/", k=100)  # run.trec + qrels.trec
```

Command line: `python -m jxr.eval --dataset xquad-r --query-emb q.npy --cand-emb c.npy --out DIR`.
"""

from jxr.eval.evaluate import embed_task, evaluate, evaluate_pools
from jxr.eval.metrics import positions, query_metrics, rank_distance
from jxr.eval.report import compare, write_report
from jxr.eval.schema import Report, StageReport, check_report
from jxr.eval.scoring import RelevantRanks, l2_normalise, relevant_ranks
from jxr.eval.trec import qrels_lines, run_lines, write_trec

__all__ = [
    "RelevantRanks",
    "Report",
    "StageReport",
    "check_report",
    "compare",
    "embed_task",
    "evaluate",
    "evaluate_pools",
    "l2_normalise",
    "positions",
    "qrels_lines",
    "query_metrics",
    "rank_distance",
    "relevant_ranks",
    "run_lines",
    "write_report",
    "write_trec",
]
