"""Stage 1 search: expert-guided MCTS over (sub-question, answer) steps, and the selection of its trajectories.

``run_mcts`` (:mod:`eagrl.mcts.cohort_search`) is the entry point; :func:`search` runs one patient's tree,
:func:`select_trajectories` picks the SFT set and :class:`TrajectoryStore` keeps the per-patient output
so an interrupted run resumes.
"""
from importlib import import_module

from eagrl.config.mcts import MCTSConfig  # noqa: F401 - the section, beside the search it configures
from eagrl.mcts.search import Completed, Node, SearchResult, search, uct
from eagrl.mcts.select import select_trajectories
from eagrl.mcts.store import TrajectoryStore

# The stage (model backends, torch) loads on first use, so eagrl.config, which imports MCTSConfig, stays light.
_LAZY = {"MCTSResult": "cohort_search", "run_mcts": "cohort_search"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"eagrl.mcts.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'eagrl.mcts' has no attribute {name!r}")


__all__ = ["Completed", "MCTSConfig", "Node", "SearchResult", "TrajectoryStore", "search", "select_trajectories",
           "uct", *_LAZY]
