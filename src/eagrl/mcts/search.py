"""One patient's tree: Monte Carlo tree search over (sub-question, answer) steps written by the policy.

A :class:`Node` holds a partial trajectory (the patient prompt plus the steps on its path). Each of the N
rollouts does, in turn:

1. **selection**: from the root, go to the child of highest UCT, ``Q + c * sqrt(ln N_parent / n)`` with
   ``Q`` the mean reward of the child (an unvisited child scores +inf, so every child is tried once before
   any is revisited), until a node without children;
2. **expansion**: a node already visited (or the root) that is below depth T gets b children from
   :meth:`StructuredGenerator.expand`, one (sub-question, answer) step each, sampled in one batch; the
   first child is the one simulated;
3. **simulation**: :meth:`StructuredGenerator.finish` writes the rest of the response (further steps per the
   step policy, never past T, then the important features and the probability); a node at depth T gets its
   answer forced;
4. **backup**: the reward R = lam * R_cls + (1 - lam) * R_att against the expert's C_exp (R_att = 0 when
   ``expert_guidance`` is off; a malformed response scores 0) is added to the value sum and visit count of
   every node on the path, root included.

With ``parallel = K > 1`` the rollouts run in rounds of K: K selections (with their expansions) come first, each
counting a visit of reward 0 on its path until its own reward is in (a *virtual loss*, Chaslot et al. 2008, so
the round spreads over the tree), then the K simulations are written as one batch, then each reward is backed
up. Right after an expansion the next b - 1 selections from that node go to its unvisited children whatever the
rewards, so K = b loses little of what the sequential search knows, and the batch is decoded together (on 2 CPU
cores 4 simulations of SmolLM2 took 10 s as one batch, 19 s one at a time).

With ``expert_features`` (off by default) each simulation's reasoning ends twice: with the features the policy
samples (the rollout above) and with the expert's C_exp written as its features (rollout index N + i, R_att = 1
by construction, not backed up). The selection ranks both; SFT then learns to name what the expert attends to,
which a 135M policy almost never samples itself (synthetic cohort: the selected trajectories' R_att 0.088).

Children continue from their parent's token ids, so the backend's prefix reuse (the KV-cache store on the
CPU path, vLLM's prefix caching on the GPU path) computes the prompt and each node's path once. Every
completed rollout is returned with its reward parts, and the tree's size, depth and time.
"""
from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from eagrl.config.llm import GenerationConfig
from eagrl.config.mcts import MCTSConfig
from eagrl.config.reward import DEFAULT_CLS, ClsReward
from eagrl.llm.backends.base import GenerationBackend, sample_seed
from eagrl.llm.rewards import r_att as jaccard
from eagrl.llm.rewards import reward
from eagrl.llm.structured import STEPS, Response, StructuredGenerator, Trajectory

SIMULATION_SEED_OFFSET = 1_000_000  # simulation seeds never collide with expansion seeds (node ids)


def uct(value_sum: float, visits: int, parent_visits: int, c: float) -> float:
    """Mean value plus the exploration bonus; +inf for an unvisited node."""
    if visits == 0:
        return math.inf
    return value_sum / visits + c * math.sqrt(math.log(max(parent_visits, 1)) / visits)


@dataclass
class Node:
    traj: Trajectory
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    id: int = 0

    @property
    def depth(self) -> int:
        return self.traj.n_steps

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def best_child(self, c: float) -> "Node":
        """The child of highest UCT (the first one on ties)."""
        scores = [uct(ch.value_sum, ch.visits, self.visits, c) for ch in self.children]
        return self.children[max(range(len(scores)), key=scores.__getitem__)]

    def path(self) -> list["Node"]:
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


@dataclass
class Completed:
    """One finished rollout: the response and its reward parts."""

    rollout: int
    leaf_id: int  # the tree node the simulation started from
    leaf_depth: int  # steps on the tree path; the response may have more (written during simulation)
    response: Response
    r: float  # the search reward (what was backed up)
    r_cls: float
    r_att: float  # R_att in the search reward: 0 without expert guidance
    r_att_expert: float  # Jaccard against C_exp whatever the guidance (to compare the ablation)
    well_formed: bool
    features_by: str = "policy"  # who wrote the important features: the policy, or the expert (expert_features)

    @property
    def probability(self) -> float | None:
        return self.response.probability

    def to_json(self) -> dict:
        r = self.response
        return {
            "rollout": self.rollout, "leaf_id": self.leaf_id, "leaf_depth": self.leaf_depth, "text": r.text,
            "token_ids": list(r.token_ids), "readout_index": r.readout_index,
            "mask": [bool(m) for m in r.mask], "probability": r.probability, "n_steps": r.n_steps,
            "features": list(r.parsed.features), "r": self.r, "r_cls": self.r_cls, "r_att": self.r_att,
            "r_att_expert": self.r_att_expert, "well_formed": self.well_formed, "features_by": self.features_by,
        }


@dataclass
class SearchResult:
    stay_id: str
    label: int
    c_exp: list[str]
    prompt_ids: list[int]
    completed: list[Completed]
    stats: dict
    root: Node | None = None  # kept for inspection (tests); not stored


def make_generator(backend: GenerationBackend, gen_cfg: GenerationConfig, cfg: MCTSConfig,
                   features: Sequence = ()) -> StructuredGenerator:
    """A structured generator whose depth is the search's T (a copy of ``gen_cfg`` if T differs)."""
    t = cfg.resolved_depth(gen_cfg.depth)
    if t != gen_cfg.depth:
        gen_cfg = gen_cfg.model_copy(update={"depth": t, "min_steps": min(gen_cfg.min_steps, t)})
    update = {"sample_readout": cfg.sample_readout}
    if cfg.temperature is not None:
        update["temperature"] = cfg.temperature
    gen_cfg = gen_cfg.model_copy(update=update)
    if gen_cfg.prompt_style != "pqd":
        raise ValueError(f"the MCTS writes (sub-question, answer) steps: generation.prompt_style must be 'pqd', "
                         f"got {gen_cfg.prompt_style!r}")
    return StructuredGenerator(backend, gen_cfg, features)


def patient_seed(seed: int, stay_id: str) -> int:
    """The seed of one patient's tree: independent of which other patients are searched, or in what order."""
    return sample_seed(seed, zlib.crc32(str(stay_id).encode()))


def search(generator: StructuredGenerator, prompt_ids: Sequence[int], label: int, c_exp: Sequence[str],
           cfg: MCTSConfig, *, stay_id: str = "", seed: int | None = None,
           cls_reward: ClsReward = DEFAULT_CLS) -> SearchResult:
    """Run ``cfg.rollouts`` rollouts from the prompt; return every completed trajectory and the tree's stats."""
    t_max = generator.cfg.depth
    if cfg.depth is not None and cfg.depth != t_max:
        raise ValueError(f"mcts.depth ({cfg.depth}) differs from the generator's depth ({t_max}); "
                         "build the generator with make_generator")
    seed = patient_seed(cfg.seed, stay_id) if seed is None else int(seed)
    c_exp = list(c_exp)
    c_search = c_exp if cfg.expert_guidance else []
    t0 = time.perf_counter()
    root = Node(generator.start(prompt_ids, seed), id=0)
    n_nodes, completed = 1, []
    for first in range(0, cfg.rollouts, cfg.parallel):
        leaves = []
        for i in range(first, min(first + cfg.parallel, cfg.rollouts)):
            node = root
            while node.children:  # selection
                node = node.best_child(cfg.exploration)
            if (node.visits > 0 or node is root) and _expandable(node, t_max):  # expansion
                kids = generator.expand(node.traj, cfg.branching, seed=sample_seed(seed, node.id))
                node.children = [Node(k, parent=node, id=n_nodes + j) for j, k in enumerate(kids)]
                n_nodes += len(kids)
                node = node.children[0]
            for n in node.path():  # the visit counts now; its reward is added at backup (virtual loss until then)
                n.visits += 1
            leaves.append((i, node))
        # simulation, the round's leaves as one batch; a leaf at depth T gets its answer forced whatever more_steps
        starts = [node.traj.child(sample_seed(seed, SIMULATION_SEED_OFFSET + i)) for i, node in leaves]
        experts = []
        if cfg.expert_features and c_exp:  # the same reasoning ends twice: the policy's features, the expert's
            written = generator.write_steps(starts, more_steps=cfg.rollout_more_steps)
            responses = generator.finish(written)
            experts = generator.finish(written, features=[c_exp] * len(written))
        else:
            responses = generator.finish(starts, more_steps=cfg.rollout_more_steps)
        for (i, node), resp in zip(leaves, responses):
            rw = reward(resp.parsed, label, c_search, cfg.lam, cls_reward)
            r_exp = jaccard(resp.parsed.features, c_exp) if rw.well_formed else 0.0
            completed.append(Completed(i, node.id, node.depth, resp, rw.total, rw.r_cls, rw.r_att, r_exp,
                                       rw.well_formed))
            for n in node.path():  # backup
                n.value_sum += rw.total
        for (i, node), resp in zip(leaves, experts):  # candidates for the selection, not backed up: not sampled
            rw = reward(resp.parsed, label, c_search, cfg.lam, cls_reward)
            completed.append(Completed(cfg.rollouts + i, node.id, node.depth, resp, rw.total, rw.r_cls, rw.r_att,
                                       rw.r_att, rw.well_formed, features_by="expert"))
    seconds = time.perf_counter() - t0
    stats = {"nodes": n_nodes, "max_depth": _max_depth(root), "seconds": seconds, "rollouts": cfg.rollouts,
             "root_value": root.q, "max_response_steps": max(c.response.n_steps for c in completed)}
    return SearchResult(str(stay_id), int(label), c_exp, list(map(int, prompt_ids)), completed, stats, root)


def _expandable(node: Node, t_max: int) -> bool:
    return node.traj.stage == STEPS and node.depth < t_max


def _max_depth(root: Node) -> int:
    best, stack = 0, [root]
    while stack:
        n = stack.pop()
        best = max(best, n.depth)
        stack.extend(n.children)
    return best
