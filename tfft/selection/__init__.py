"""Model selection: rule-based recommendations and an empirical bake-off.

- `recommend(task, modality, num_examples, compute=...)`: ranked backbone +
  method suggestions from catalog metadata; the rules are data in
  `tfft.selection.rules`.
- `select(candidates, train, val, budget_seconds=...)`: runs the candidates
  (TF-IDF baseline, zero-shot prompts, linear probes on cached features,
  short fine-tunes) within a time budget and returns a `Leaderboard`.
"""

from tfft.selection import rules
from tfft.selection.candidates import Candidate, parse_candidate, parse_candidates
from tfft.selection.leaderboard import Leaderboard, LeaderboardRow
from tfft.selection.metrics import METRICS
from tfft.selection.recommend import Recommendation, estimate_seconds, recommend
from tfft.selection.select import select

__all__ = [
    "METRICS",
    "Candidate",
    "Leaderboard",
    "LeaderboardRow",
    "Recommendation",
    "estimate_seconds",
    "parse_candidate",
    "parse_candidates",
    "recommend",
    "rules",
    "select",
]
