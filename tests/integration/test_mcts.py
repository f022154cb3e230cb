"""Stage-1 MCTS: UCT, backup, the depth limit, the ablation reward, selection, the resumable store, seeds."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from support.llm import FEATURES, patient, tjh_cohort

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.errors import ConfigError, DataError
from eagrl.llm.backends.transformers_backend import TransformersBackend
from eagrl.llm.prompt import build_prompt, encode
from eagrl.llm.rewards import r_att
from eagrl.mcts import MCTSConfig, Node, TrajectoryStore, run_mcts, search, select_trajectories, uct
from eagrl.mcts.search import make_generator
from eagrl.mcts.select import balance_classes

CAPS = dict(max_subquestion_tokens=4, max_answer_tokens=4, max_features_tokens=6)
C_EXP = ["hemoglobin", "albumin", "Lactate dehydrogenase"]


@pytest.fixture(scope="module")
def prompt_ids(tiny):
    _, tok = tiny
    return encode(build_prompt(patient(), FEATURES, dataset="tjh", task="mortality", cfg=GenerationConfig(),
                               tokenizer=tok), tok)


def _backend(tiny):
    model, tok = tiny
    return TransformersBackend(model, tok, prefix_cache_tokens=100_000, threads=1)


def _search(tiny, prompt_ids, backend=None, gen=None, **cfg):
    mcts = MCTSConfig(**{"rollouts": 5, "branching": 2, "depth": 3, **cfg})
    gen_cfg = GenerationConfig(**{**CAPS, **(gen or {})})
    generator = make_generator(backend or _backend(tiny), gen_cfg, mcts, FEATURES)
    return search(generator, prompt_ids, 1, C_EXP, mcts, stay_id="p1")


def _nodes(root: Node) -> list[Node]:
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.children)
    return out


# ====================================================================== UCT and backup
def test_uct_hand_computed():
    assert uct(0.0, 0, 10, 1.0) == math.inf
    assert uct(6.0, 8, 10, 1.0) == pytest.approx(0.75 + math.sqrt(math.log(10) / 8))  # 1.2865
    assert uct(1.0, 2, 10, 1.0) == pytest.approx(0.5 + math.sqrt(math.log(10) / 2))  # 1.5730
    parent = Node(traj=None, visits=10)
    a, b, c = Node(None, parent, visits=8, value_sum=6.0), Node(None, parent, visits=2, value_sum=1.0), \
        Node(None, parent, visits=0)
    parent.children = [a, b, c]
    assert parent.best_child(1.0) is c  # unvisited first
    c.visits, c.value_sum = 0, 0.0
    parent.children = [a, b]
    assert parent.best_child(1.0) is b  # exploration bonus wins: 1.573 > 1.287
    assert parent.best_child(0.0) is a  # pure exploitation: 0.75 > 0.5


def test_rewards_back_up_along_the_path(tiny, prompt_ids):
    _check_backup(_search(tiny, prompt_ids, rollouts=6))


def _check_backup(res):
    root = res.root
    assert len(res.completed) == 6 and root.visits == 6
    assert root.value_sum == pytest.approx(sum(c.r for c in res.completed))
    by_id = {n.id: n for n in _nodes(root)}
    assert res.stats["nodes"] == len(by_id)
    for node in by_id.values():
        sub = {n.id for n in _nodes(node)}
        mine = [c for c in res.completed if c.leaf_id in sub]
        assert node.visits == len(mine)
        assert node.value_sum == pytest.approx(sum(c.r for c in mine))
        for ch in node.children:
            assert ch.traj.n_steps == node.traj.n_steps + 1
            assert ch.traj.ids[:len(node.traj.ids)] == node.traj.ids  # children extend the parent's tokens
    # every child of the root was tried before any grandchild (UCT: unvisited = +inf)
    assert all(ch.visits >= 1 for ch in root.children)


def test_parallel_rounds_simulate_as_one_batch_and_back_up_every_reward(tiny, prompt_ids):
    backend = _backend(tiny)
    mcts = MCTSConfig(rollouts=6, branching=2, depth=3, parallel=2)
    generator = make_generator(backend, GenerationConfig(**CAPS), mcts, FEATURES)
    batches = []
    finish = generator.finish

    def recorded(trajs, more_steps=True):
        batches.append(len(trajs))
        return finish(trajs, more_steps=more_steps)

    generator.finish = recorded
    res = search(generator, prompt_ids, 1, C_EXP, mcts, stay_id="p1")
    assert batches == [2, 2, 2] and [c.rollout for c in res.completed] == list(range(6))
    _check_backup(res)  # the virtual visits became real ones: visits and value sums match the completed rollouts

    # the first round (the root's b children) and the first selection of the second (it sees both rewards) are
    # the sequential search's; the tiny model in float32 writes the same tokens in a batch or alone (its readout
    # agrees to float rounding: 1e-9 apart through R_cls's log)
    one = _search(tiny, prompt_ids, rollouts=6, parallel=1)

    def key(c):
        return c.leaf_id, c.response.text, round(c.r, 6)

    assert [key(c) for c in res.completed[:3]] == [key(c) for c in one.completed[:3]]
    assert [c.leaf_id for c in res.completed[:2]] == [ch.id for ch in res.root.children]

    batches.clear()
    every = search(generator, prompt_ids, 1, C_EXP, mcts.model_copy(update={"parallel": 8}), stay_id="p1")
    assert batches == [6] and len(every.completed) == 6  # K above N: one round
    _check_backup(every)


def test_depth_limit_forces_the_answer(tiny, prompt_ids):
    res = _search(tiny, prompt_ids, rollouts=6, depth=1)
    assert res.stats["max_depth"] == 1 and res.stats["nodes"] == 3  # root + b children, never deeper
    assert all(c.response.n_steps == 1 and c.well_formed for c in res.completed)
    res = _search(tiny, prompt_ids, rollouts=8, depth=2, gen={"step_policy": "fixed"})
    assert max(n.depth for n in _nodes(res.root)) <= 2
    assert all(not n.children for n in _nodes(res.root) if n.depth == 2)
    assert all(c.response.n_steps == 2 for c in res.completed)  # fixed policy: rolled out to T, then answered


def test_without_expert_guidance_r_att_is_zero(tiny, prompt_ids):
    res = _search(tiny, prompt_ids, expert_guidance=False, lam=0.6)
    for c in res.completed:
        assert c.r_att == 0.0
        assert c.r == pytest.approx(0.6 * c.r_cls)
        assert c.r_att_expert == pytest.approx(r_att(c.response.parsed.features, C_EXP) if c.well_formed else 0.0)
    on = _search(tiny, prompt_ids, expert_guidance=True, lam=0.6)
    for c in on.completed:
        assert c.r_att == c.r_att_expert
        assert c.r == pytest.approx(0.6 * c.r_cls + 0.4 * c.r_att)


def test_expert_features_end_each_rollouts_reasoning_a_second_time_with_c_exp_as_the_named_features(tiny, prompt_ids):
    res = _search(tiny, prompt_ids, rollouts=4, expert_features=True, lam=0.6)
    policy = [c for c in res.completed if c.features_by == "policy"]
    expert = [c for c in res.completed if c.features_by == "expert"]
    assert [c.rollout for c in policy] == [0, 1, 2, 3] and [c.rollout for c in expert] == [4, 5, 6, 7]
    for own, given in zip(policy, expert):
        assert given.leaf_id == own.leaf_id
        a, b = own.response, given.response
        cut = a.features_span[0]  # the same reasoning, token for token, up to the features field
        assert b.token_ids[:cut] == a.token_ids[:cut] and b.features_span[0] == cut
        start, end = b.features_span
        assert b.text.split("<important_features>")[1].startswith("hemoglobin; albumin; Lactate dehydrogenase")
        assert all(b.mask[start:end]) and end > start  # SFT trains the expert's names as the policy's own text
        assert b.parsed.known_features == C_EXP and given.r_att == given.r_att_expert == 1.0
        assert given.r == pytest.approx(0.6 * given.r_cls + 0.4) and given.well_formed
        assert 0.0 < given.probability < 1.0 and b.readout_index > end  # read after the expert's names
    # only the sampled rollouts are backed up: the tree is the policy's
    assert res.root.visits == 4 and res.root.value_sum == pytest.approx(sum(c.r for c in policy))
    # and the policy's own endings are those of the search without the option (same seeds, same tokens)
    plain = _search(tiny, prompt_ids, rollouts=4, lam=0.6)
    assert [(c.response.text, round(c.r, 6)) for c in plain.completed] == [
        (c.response.text, round(c.r, 6)) for c in policy]
    with pytest.raises(ValueError, match="expert_features writes the expert's C_exp"):
        MCTSConfig(expert_features=True, expert_guidance=False)


def test_with_evidence_every_ending_reads_its_slot_after_the_named_features_record_lines(tiny, prompt_ids):
    """generation.evidence: the expert's ending puts C_exp's record lines before the slot, the policy's own ending
    the lines of what it named; R_cls is read after them, and nothing the framework restated is trained on."""
    res = _search(tiny, prompt_ids, rollouts=2, expert_features=True, lam=0.6, gen={"evidence": True})
    lines = _backend(tiny).decode(prompt_ids).splitlines()
    line = {f.name: next((x for x in lines if x.startswith(f"- {f.name}:")), None) for f in FEATURES}
    assert {c.features_by for c in res.completed} == {"policy", "expert"}
    for c in res.completed:
        r = c.response
        body = r.text.split("<evidence>")[1].split("</evidence>")[0]
        named = C_EXP if c.features_by == "expert" else r.parsed.known_features
        assert body.strip("\n").split("\n") == ([line[n] for n in named if line[n]] or [""]), r.text
        assert r.text.index("</important_features>") < r.text.index("<evidence>") < r.text.index("<final_answer>")
        assert not any(r.mask[r.features_span[1]:r.readout_index])
        assert r.well_formed and c.r == pytest.approx(0.6 * c.r_cls + 0.4 * c.r_att)


def test_same_seed_same_tree(tiny, prompt_ids):
    a = _search(tiny, prompt_ids, seed=3, gen={"temperature": 1.5})
    b = _search(tiny, prompt_ids, seed=3, gen={"temperature": 1.5})
    c = _search(tiny, prompt_ids, seed=4, gen={"temperature": 1.5})

    def key(res):
        return [(x.response.text, round(x.r, 9)) for x in res.completed]

    assert key(a) == key(b)
    assert key(a) != key(c)


# ====================================================================== selection
def _traj(rollout, r, p, text=None, well=True, slot=None):
    return {"rollout": rollout, "r": r, "r_cls": r, "r_att": 0.0, "r_att_expert": 0.0, "probability": p,
            "text": text or f"t{rollout}", "token_ids": [rollout], "mask": [True], "n_steps": 1, "well_formed": well,
            "readout_index": slot}


def _patient(sid, label, trajs):
    return {"stay_id": sid, "label": label, "c_exp": ["a"], "prompt_ids": [1, 2], "prompt_text": "P",
            "trajectories": trajs}


def test_selection_keeps_correct_side_top_k_and_balances():
    pats = [
        _patient("a", 1, [_traj(0, 0.9, 0.4), _traj(1, 0.5, 0.7), _traj(2, 0.7, 0.6), _traj(3, 0.6, 0.55),
                          _traj(4, 0.95, 0.9, well=False)]),
        _patient("b", 1, [_traj(0, 0.8, 0.8), _traj(1, 0.8, 0.8, text="t0"), _traj(2, 0.2, 0.51)]),
        _patient("c", 0, [_traj(0, 0.9, 0.2), _traj(1, 0.4, 0.6)]),
        _patient("d", 1, [_traj(0, 0.99, 0.1)]),  # nothing on the correct side
    ]
    cfg = MCTSConfig(top_k_per_patient=2, balance=False)
    sel = select_trajectories(pats, cfg)
    assert [(s["stay_id"], s["rollout"]) for s in sel] == [("a", 2), ("a", 3), ("b", 0), ("b", 2), ("c", 0)]
    assert all((s["probability"] >= 0.5) == (s["label"] == 1) for s in sel)
    assert set(sel[0]) >= {"stay_id", "label", "c_exp", "prompt_text", "prompt_ids", "response", "token_ids",
                           "mask", "r", "r_cls", "r_att", "probability"}
    bal = select_trajectories(pats, MCTSConfig(top_k_per_patient=2, balance=True))
    assert sum(s["label"] == 1 for s in bal) == sum(s["label"] == 0 for s in bal) == 1
    assert [(s["stay_id"], s["rollout"]) for s in bal] == [("b", 0), ("c", 0)]  # the best positive kept
    # the yes/no readout trains the slot on the label: every patient keeps its best well-formed trajectories by R
    any_side = select_trajectories(pats, cfg, correct_side_only=False)
    assert [(s["stay_id"], s["rollout"]) for s in any_side] == [("a", 0), ("a", 2), ("b", 0), ("b", 2), ("c", 0),
                                                                 ("c", 1), ("d", 0)]
    one_class = [{"label": 1, "r": 0.5}, {"label": 1, "r": 0.6}]
    assert balance_classes(one_class) == one_class  # nothing to balance against: kept, with a warning


def test_the_kept_patients_other_rollouts_follow_for_the_answer_slot_alone():
    """With the yes/no readout every well-formed rollout of a kept patient trains the slot: the selected one with its
    text, the others slot-only, so the union's text carries no net label cue; a patient balancing drops brings none."""
    pats = [
        _patient("a", 1, [_traj(0, 0.9, 0.4, slot=3), _traj(1, 0.5, 0.7, slot=3),
                          _traj(2, 0.7, 0.6, well=False, slot=3), _traj(3, 0.6, 0.5, text="t0", slot=3)]),
        _patient("b", 0, [_traj(0, 0.8, 0.8, slot=3), _traj(1, 0.2, 0.5, slot=3)]),
        _patient("c", 0, [_traj(0, 0.3, 0.8, slot=3), _traj(1, 0.1, 0.5, slot=3)]),
    ]
    sel = select_trajectories(pats, MCTSConfig(top_k_per_patient=1, balance=True), correct_side_only=False,
                              slot_only=True)
    texts = [(s["stay_id"], s["rollout"]) for s in sel if s.get("train_text", True)]
    slots = [(s["stay_id"], s["rollout"]) for s in sel if s.get("train_text") is False]
    assert texts == [("a", 0), ("b", 0)]  # c: the lower-R negative, cut by balancing
    assert slots == [("a", 1), ("a", 3), ("b", 1)]  # a's malformed rollout 2 is not; the same text as 0 is a draw
    assert all(s["label"] == {"a": 1, "b": 0}[s["stay_id"]] for s in sel)
    plain = select_trajectories(pats, MCTSConfig(top_k_per_patient=1, balance=True), correct_side_only=False)
    assert [(s["stay_id"], s["rollout"]) for s in plain] == texts and all("train_text" not in s for s in plain)


# ====================================================================== store and stage
def test_store_truncates_a_partial_last_line_and_rejects_other_damage(tmp_path):
    path = tmp_path / "t.jsonl"
    s = TrajectoryStore(path, {"x": 1})
    s.append({"stay_id": "a", "v": 1})
    s.append({"stay_id": "b", "v": 2})
    text = path.read_text()
    path.write_text(text[:-9])  # killed mid-write
    with pytest.warns(RuntimeWarning, match="incomplete"):
        s2 = TrajectoryStore(path, {"x": 1})
    assert s2.done() == {"a"}
    s2.append({"stay_id": "b", "v": 3})
    assert [p["v"] for p in TrajectoryStore(path, {"x": 1}).patients()] == [1, 3]
    with pytest.raises(ConfigError, match="other search settings"):
        TrajectoryStore(path, {"x": 2})
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{broken\n" + "".join(lines[2:]))
    with pytest.raises(DataError, match="line 2"):
        TrajectoryStore(path, {"x": 1})


def test_run_mcts_resumes_and_reports(tiny, tmp_path):
    cohort = tjh_cohort()
    cfg = MCTSConfig(rollouts=2, branching=2, depth=2, top_k_per_patient=1, n_boot=50)
    ids = cohort.sample_ids("train", 3, cfg.seed)  # what max_stays=3 searches: a stratified sample
    first_two = cohort.sample_ids("train", 2, cfg.seed)
    assert set(first_two) < set(ids)
    table = pd.DataFrame({"stay_id": ids, "c_exp": [cohort.feature_names[:3]] * len(ids)})
    gen = GenerationConfig(**CAPS, max_prompt_tokens=1024)
    backend = _backend(tiny)
    first = run_mcts(cohort, table, None, gen, cfg, tmp_path, max_stays=2, backend=backend, progress=False)
    assert first.n_searched == 2 and first.metrics["n_patients"] == 2 and first.metrics["n_trajectories"] == 4
    store = first.trajectories_path
    store.write_text(store.read_text()[:-20])  # the second patient's line cut short
    with pytest.warns(RuntimeWarning, match="incomplete"):
        again = run_mcts(cohort, table, None, gen, cfg, tmp_path, max_stays=3, backend=backend, progress=False)
    assert (again.n_skipped, again.n_searched) == (1, 2)
    stored = [json.loads(line)["stay_id"] for line in store.read_text().splitlines()[1:]]
    assert stored[0] == first_two[0] and sorted(stored) == sorted(ids)  # each stay once, the intact one kept
    m = json.loads(again.metrics_path.read_text())
    assert m["n_patients"] == 3 and m["n_trajectories"] == 6 and m["tree_nodes_mean"] >= 3
    sel = [json.loads(line) for line in again.selected_path.read_text().splitlines()]
    texts = [s for s in sel if s.get("train_text", True)]  # the rest: the kept stays' other rollouts, slot alone
    assert len(texts) == m["n_selected"] <= 3 and len(sel) - len(texts) == m["n_slot_only"]
    assert {s["stay_id"] for s in sel} == {s["stay_id"] for s in texts}
    if sel:
        assert len(m["selected_r_ci"]) == 2 and m["selected_r_ci"][0] <= m["selected_r_mean"] <= m["selected_r_ci"][1]
    with pytest.raises(ConfigError, match="other search settings \\(model: .*'dtype': 'float32'.* vs now .*'bfloat16'"):
        run_mcts(cohort, table, ModelConfig(dtype="bfloat16"), gen, cfg, tmp_path, max_stays=3, backend=backend,
                 progress=False)  # the same model in another precision writes other trajectories: not resumed
    with pytest.raises(DataError, match="no C_exp"):
        run_mcts(cohort, table.iloc[:1], None, gen, cfg, tmp_path / "x", max_stays=3, backend=backend, progress=False)


def test_the_selection_counts_the_candidates_naming_the_expert_apart(tiny, tmp_path):
    cohort = tjh_cohort()
    cfg = MCTSConfig(rollouts=2, branching=2, depth=2, top_k_per_patient=1, n_boot=0, balance=False,
                     expert_features=True)
    ids = cohort.sample_ids("train", 2, cfg.seed)
    table = pd.DataFrame({"stay_id": ids, "c_exp": [cohort.feature_names[:2]] * len(ids)})
    res = run_mcts(cohort, table, None, GenerationConfig(**CAPS, max_prompt_tokens=1024), cfg, tmp_path,
                   max_stays=2, backend=_backend(tiny), progress=False)
    m = res.metrics
    assert m["n_trajectories"] == 4 and m["n_expert_candidates"] == 4  # the policy's rollouts, counted apart
    sel = [json.loads(line) for line in res.selected_path.read_text().splitlines()]
    texts = [s for s in sel if s.get("train_text", True)]
    assert m["selected_expert_features_share"] == pytest.approx(np.mean([s["features_by"] == "expert" for s in texts]))
    lines = res.trajectories_path.read_text().splitlines()[1:]
    stored = {json.loads(line)["stay_id"]: json.loads(line) for line in lines}
    for s in texts:  # the best R of all four candidates of its stay, whoever wrote the features
        cands = stored[s["stay_id"]]["trajectories"]
        assert len(cands) == 4 and s["r"] == max(t["r"] for t in cands if t["well_formed"])
        assert (s["features_by"] == "expert") == (s["rollout"] >= cfg.rollouts)
        if s["features_by"] == "expert":
            assert s["r_att"] == 1.0 and s["response"].split("<important_features>")[1].startswith(
                "; ".join(cohort.feature_names[:2]))


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_a_store_written_with_the_earlier_header_form_still_resumes(profile, tmp_path):
    """The header's generation part is GenerationConfig.content() (JSON mode); stores written before it held the
    Python-mode dump without the throughput-only fields. Both must open the same store and key the same folder."""
    from eagrl.config import load_config
    from eagrl.mcts.cohort_search import search_header

    cfg = load_config(profile)
    cohort = tjh_cohort()
    header = search_header(cohort, cfg.model, cfg.generation, cfg.mcts, cfg.mcts.split)
    earlier = {**header, "generation": cfg.generation.model_dump(exclude=set(GenerationConfig.THROUGHPUT_ONLY))}
    TrajectoryStore(tmp_path / "t.jsonl", earlier)
    assert TrajectoryStore(tmp_path / "t.jsonl", header).done() == set()  # no ConfigError: the settings match
    assert json.dumps(header, sort_keys=True, default=str) == json.dumps(earlier, sort_keys=True, default=str)
    with pytest.raises(ConfigError, match="temperature"):  # and a real change is still refused
        changed = cfg.generation.model_copy(update={"temperature": cfg.generation.temperature + 0.5})
        TrajectoryStore(tmp_path / "t.jsonl", search_header(cohort, cfg.model, changed, cfg.mcts, cfg.mcts.split))
    # the same goes for mcts.parallel, which came later: at 1 (one rollout at a time) it is not in the header
    sequential = cfg.mcts.model_copy(update={"parallel": 1})
    assert "parallel" not in search_header(cohort, cfg.model, cfg.generation, sequential, cfg.mcts.split)["mcts"]
    with pytest.raises(ConfigError, match="parallel"):  # batched rounds write other trees: a store of their own
        batched = cfg.mcts.model_copy(update={"parallel": cfg.mcts.parallel + 1})
        TrajectoryStore(tmp_path / "t.jsonl", search_header(cohort, cfg.model, cfg.generation, batched, cfg.mcts.split))
