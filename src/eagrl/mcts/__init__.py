"""Stage 1 search: expert-guided MCTS over (sub-question, answer) steps, and the selection of its trajectories.

``run_mcts`` (:mod:`eagrl.mcts.stage`) is the entry point; :func:`search` runs one patient's tree,
:func:`select_trajectories` picks the SFT set and :class:`TrajectoryStore` keeps the per-patient output
so an interrupted run resumes.
"""
from importlib import import_module

from eagrl.mcts.config import MCTSConfig

# The rest loads on first use, so the config (imported by eagrl.config) stays free of torch.
_LAZY = {"Completed": "search", "Node": "search", "SearchResult": "search", "search": "search", "uct": "search",
         "select_trajectories": "select", "MCTSResult": "stage", "run_mcts": "stage", "TrajectoryStore": "store"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"eagrl.mcts.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'eagrl.mcts' has no attribute {name!r}")


__all__ = ["MCTSConfig", *_LAZY]
