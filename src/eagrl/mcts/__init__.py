"""Stage 1 search: expert-guided MCTS over (sub-question, answer) steps, and the selection of its trajectories.

``run_mcts`` (:mod:`eagrl.mcts.stage`) is the entry point; :func:`search` runs one patient's tree,
:func:`select_trajectories` picks the SFT set and :class:`TrajectoryStore` keeps the per-patient output
so an interrupted run resumes.
"""
from eagrl.mcts.config import MCTSConfig
from eagrl.mcts.search import Completed, Node, SearchResult, search, uct
from eagrl.mcts.select import select_trajectories
from eagrl.mcts.stage import MCTSResult, run_mcts
from eagrl.mcts.store import TrajectoryStore

__all__ = ["Completed", "MCTSConfig", "MCTSResult", "Node", "SearchResult", "TrajectoryStore", "run_mcts",
           "search", "select_trajectories", "uct"]
