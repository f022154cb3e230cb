"""Stage 1 as pipeline stages: MCTS (store in the workspace, resume, ablation, DVC, MLflow) and SFT (registry)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pytest
import yaml
from support.cli import run_cli

from eagrl.cli import build_config
from eagrl.errors import DataError


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
    """A smoke workspace with the MIMIC-IV demo cohort and a trained expert (C_exp)."""
    ws = tmp_path_factory.mktemp("stage1") / "ws"
    ws.mkdir()
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("DVC_SITE_CACHE_DIR", str(ws.parent / "dvc-site"))
    common = ["--profile", "smoke", "--data-path", str(shared_data / "mimic-iv-demo-clif"), "--workspace", str(ws),
              "--out", str(ws / "out")]
    for cmd in (["data", "prepare"], ["expert", "train"]):
        res = run_cli(*cmd, *common)
        assert res.returncode == 0, res.stderr[-2000:]
    yield ws, common
    mp.undo()


def _cfg(ws: Path, *sets: str):
    return build_config("smoke", sets=list(sets), workspace=ws)


def test_mcts_stage_stores_in_the_workspace_resumes_and_versions(prepared):
    from eagrl.mcts.stage import mcts_stage

    ws, _ = prepared
    first = mcts_stage(_cfg(ws, "mcts.max_stays=3"), ws / "out-a")
    store = Path(first.outputs["trajectories"])
    assert store.parent.parent == ws / "data" / "trajectories" / "mimic-iv-demo-readmission_30d"
    assert first.metrics["n_patients"] == 3 and first.metrics["n_resumed"] == 0
    lines = store.read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "header" and len(lines) == 4

    # a rerun with more stays searches only the new ones and keeps the stored trees byte for byte
    second = mcts_stage(_cfg(ws, "mcts.max_stays=5"), ws / "out-b")
    assert second.outputs["trajectories"] == str(store)
    assert second.metrics["n_patients"] == 5 and second.metrics["n_resumed"] == 3
    assert store.read_text().splitlines()[:4] == lines

    selected = [json.loads(x) for x in Path(second.outputs["selected"]).read_text().splitlines()]
    assert selected and all({"prompt_ids", "token_ids", "mask", "r", "r_att", "r_cls", "stay_id", "label",
                             "c_exp"} <= set(s) for s in selected)
    # the yes/no readout: SFT trains the answer slot on the label, so a stay's best trajectory is kept whichever side
    # of 0.5 its readout fell on (the digits readout keeps only correct-side ones: test_mcts), and each carries its slot
    searched = {json.loads(x)["stay_id"] for x in store.read_text().splitlines()[1:]}
    assert {s["stay_id"] for s in selected} <= searched
    assert all(s["readout_index"] is not None and 0 <= s["readout_index"] < len(s["token_ids"]) for s in selected)

    # tracked: reward statistics, the plot and the selected set in MLflow; the data version in DVC
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    run = client.get_run(second.mlflow_run_id)
    texts = [s for s in selected if s.get("train_text", True)]  # the rest: other rollouts, for the answer slot alone
    assert run.data.metrics["n_selected"] == len(texts) and "selected_r_att_mean" in run.data.metrics
    assert run.data.metrics["n_slot_only"] == len(selected) - len(texts) > 0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"selected.jsonl", "rewards.png", "metrics.json"}
    dvc = yaml.safe_load((ws / "data.dvc").read_text())
    assert run.data.tags["eagrl.dvc_data_md5"] == dvc["outs"][0]["md5"]


def test_unguided_ablation_searches_beside_the_guided_store(prepared):
    from eagrl.mcts.stage import mcts_stage

    ws, _ = prepared
    guided = mcts_stage(_cfg(ws, "mcts.max_stays=2"), ws / "out-g")
    unguided = mcts_stage(_cfg(ws, "mcts.max_stays=2", "mcts.expert_guidance=false"), ws / "out-u")
    g, u = Path(guided.outputs["trajectories"]), Path(unguided.outputs["trajectories"])
    assert g.parent != u.parent and u.parent.name.startswith("unguided-") and g.is_file()
    trajs = [t for line in u.read_text().splitlines()[1:] for t in json.loads(line)["trajectories"]]
    assert trajs and all(t["r_att"] == 0.0 for t in trajs)  # the search reward ignores C_exp
    assert all(0.0 <= t["r_att_expert"] <= 1.0 for t in trajs)  # still measured against C_exp, for comparison


def test_mcts_without_an_expert_says_what_to_run(shared_data, workspace):
    from eagrl.mcts.stage import mcts_stage

    res = run_cli("data", "prepare", "--profile", "smoke", "--data-path", str(shared_data / "mimic-iv-demo-clif"),
                  "--workspace", str(workspace), "--out", str(workspace / "out"))
    assert res.returncode == 0, res.stderr[-2000:]
    with pytest.raises(DataError, match="attention.parquet.*train the expert first"):
        mcts_stage(_cfg(workspace), workspace / "out")
    status = json.loads((workspace / "out" / "mcts" / "status.json").read_text())
    assert status["status"] == "failed"


def test_sft_stage_trains_scores_and_registers_a_loadable_policy(prepared):
    from eagrl.config.llm import ModelConfig
    from eagrl.llm.loading import load_model
    from eagrl.mcts.stage import mcts_stage
    from eagrl.sft.stage import sft_stage

    ws, _ = prepared
    cfg = _cfg(ws, "mcts.max_stays=4", "sft.eval_max_stays=6", "sft.eval_n_boot=50")
    searched = mcts_stage(cfg, ws / "out-s")
    result = sft_stage(cfg, ws / "out-s")  # finds the MCTS stage's selected set for the same settings
    m = result.metrics
    n_selected = len(Path(searched.outputs["selected"]).read_text().splitlines())
    assert m["n_examples"] == n_selected and m["test_n_stays"] == 6 and 0 <= m["test_well_formed_rate"] <= 1
    assert (ws / "out-s" / "sft" / "loss.png").stat().st_size > 1000
    from safetensors.torch import load_file

    weights = load_file(str(Path(result.outputs["adapter"]) / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and any(float(w.abs().max()) > 0 for w in lora_b)  # LoRA B starts at 0: training moved it

    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    version = client.get_latest_versions("eagrl-sft-mimic-iv-demo-readmission_30d")[0]
    run = client.get_run(version.run_id)
    assert run.info.run_id == result.mlflow_run_id
    assert run.data.tags["eagrl.trajectories_md5"] == \
        hashlib.md5(Path(searched.outputs["selected"]).read_bytes()).hexdigest()
    assert "train_loss" in run.data.metrics and "test_well_formed_rate" in run.data.metrics

    # the registered version is a usable policy: as an adapter for the loader, and as an MLflow pyfunc
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    try:
        uri = f"models:/eagrl-sft-mimic-iv-demo-readmission_30d/{version.version}"
        loaded = load_model(ModelConfig(source="tiny", adapter=uri, cache_dir=str(ws / ".cache" / "models")))
        assert loaded.model is not None
        pyfunc = mlflow.pyfunc.load_model(uri)
        out = pyfunc.predict(["Is the patient at risk?"], params={"max_tokens": 5})
        assert len(out) == 1 and isinstance(out[0], str)
    finally:
        mlflow.set_tracking_uri(None)


def test_sft_then_trains_the_answer_slot_after_the_policys_own_text(prepared):
    """SFT's second phase (eagrl.sft.own_text): the trained policy writes its P_QD response to every training stay and
    the answer slot alone learns each stay's label after that text, the text the evaluation, RL and serving read it
    after. Teacher-forced on those responses, the phase's adapter gives the labels a higher class-weighted likelihood
    (the phase's objective: each class weighed n / (2 n_class)) than the first phase's (kept as it was); the stage
    registers the phase's adapter. (Whether the slot comes to rank the stays is
    a question for the real model: the tiny one barely reads a prompt; docs/results.md has TJH.)"""
    import torch

    from eagrl.config.llm import ModelConfig
    from eagrl.data.cohort import Cohort
    from eagrl.llm.loading import load_model
    from eagrl.llm.structured import answer_words, tokenizer_encode, yes_no_ids
    from eagrl.mcts.stage import mcts_stage
    from eagrl.metrics import auroc
    from eagrl.sft.data import SFTCollator, load_examples
    from eagrl.sft.stage import sft_stage
    from eagrl.sft.train import answer_slot_logprob, class_weights
    from eagrl.workspace import Workspace

    ws, _ = prepared
    cfg = _cfg(ws, "mcts.max_stays=4", "sft.eval_max_stays=6", "sft.eval_n_boot=50", "sft.fit_max_stays=6",
               "sft.own_text_epochs=4", "sft.batch_size=64", "sft.grad_accumulation=1", "sft.learning_rate=3e-3",
               "sft.lr_scheduler=constant", "sft.lora_dropout=0")  # whole-set steps: the objective falls step by step
    mcts_stage(cfg, ws / "out-o")
    first = ws / "out-o" / "sft" / "train" / "adapter"
    result = sft_stage(cfg, ws / "out-o")
    phase = ws / "out-o" / "sft" / "own-text"
    cohort = Cohort.load(Workspace.of(cfg).cohort_dir)
    records = [json.loads(x) for x in (phase / "own_text.jsonl").read_text().splitlines()]
    assert sorted(r["stay_id"] for r in records) == sorted(map(str, cohort.split_ids("train")))
    assert all(r["train_text"] is False and 0 <= r["readout_index"] < len(r["token_ids"]) for r in records)
    assert all(any(r["mask"]) for r in records)  # the policy wrote text before each slot
    m = result.metrics
    assert m["own_text_stays"] == m["own_text_examples"] == len(records) and m["own_text_steps"] >= 1
    assert result.outputs["adapter"] == str(phase / "adapter") and "own text" in result.message

    def slot_readout(adapter: Path) -> tuple[float, float]:
        """(class-weighted mean NLL of the label's word at the slot, AUROC of P(yes)) teacher-forced on the
        responses."""
        loaded = load_model(ModelConfig(source="tiny", adapter=str(adapter)))
        enc = tokenizer_encode(loaded.tokenizer)
        data = load_examples(phase / "own_text.jsonl", 4096, answer_tokens=answer_words(enc))
        batch = SFTCollator(loaded.tokenizer.pad_token_id)(data.examples)
        with torch.no_grad():
            logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        two = answer_slot_logprob(logits[torch.arange(len(data.examples)), batch["answer_pos"] - 1],
                                  *yes_no_ids(enc))  # (n, 2): (no, yes)
        y = batch["answer_label"]
        w = torch.tensor(class_weights(y.tolist()))[y]
        return -float((two.gather(1, y[:, None])[:, 0] * w).mean()), auroc(y.tolist(), two[:, 1].exp().tolist())

    (nll_before, auroc_before), (nll_after, _) = slot_readout(first), slot_readout(phase / "adapter")
    assert abs(auroc_before - m["own_text_auroc_before"]) < 0.05, (auroc_before, m)  # the same readout
    assert nll_after < nll_before, (nll_before, nll_after)


def test_the_direct_fine_tune_trains_the_slot_on_every_training_stay_and_registers(prepared):
    """The direct baseline: one example a training stay (vanilla prompt, <final_answer>, the label's word at the slot),
    the answer-slot loss alone, scored in the vanilla style on held-out and on its own training stays."""
    import json

    from eagrl.data.cohort import Cohort
    from eagrl.llm.loading import build_tiny
    from eagrl.sft.stage import direct_stage
    from eagrl.workspace import Workspace

    ws, _ = prepared
    cfg = _cfg(ws, "sft.eval_max_stays=6", "sft.eval_n_boot=50", "sft.fit_max_stays=6")
    result = direct_stage(cfg, ws / "out-d")
    cohort = Cohort.load(Workspace.of(cfg).cohort_dir)
    records = [json.loads(x) for x in (ws / "out-d" / "direct" / "examples.jsonl").read_text().splitlines()]
    assert sorted(r["stay_id"] for r in records) == sorted(map(str, cohort.split_ids("train")))
    tok = build_tiny()[1]
    words = {1: tok.encode("yes", add_special_tokens=False)[0], 0: tok.encode("no", add_special_tokens=False)[0]}
    for r in records:
        assert r["token_ids"][r["readout_index"]] == words[r["label"]] and not any(r["mask"])
        assert tok.decode(r["prompt_ids"]).count("<subquestion>") == 0  # the vanilla style: no reasoning asked
    m = result.metrics
    assert m["n_answer_targets"] == len(records) and m["n_target_tokens"] == 0 and m["optimizer_steps"] >= 1
    assert m["test_n_stays"] == 6 and m["train_n_stays"] == 6 and m["test_well_formed_rate"] == 1.0
    first = json.loads((ws / "out-d" / "direct" / "heldout" / "responses.jsonl").read_text().splitlines()[0])
    assert first["text"].startswith("<final_answer>") and "<subquestion>" not in first["text"]
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    assert client.get_latest_versions("eagrl-direct-mimic-iv-demo-readmission_30d")[0].run_id == result.mlflow_run_id


def test_sft_without_trajectories_says_what_to_run(prepared):
    from eagrl.sft.stage import sft_stage

    ws, _ = prepared
    with pytest.raises(DataError, match="run `eagrl mcts`"):
        sft_stage(_cfg(ws, "mcts.rollouts=7"), ws / "out-none")


def test_cli_mcts_unguided_flag(prepared):
    ws, common = prepared
    res = run_cli("mcts", *common, "--unguided", "--set", "mcts.max_stays=1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "MCTS (unguided)" in res.stderr.replace("\n", " ")


@pytest.fixture(scope="module")
def rl_trained(prepared):
    """MCTS -> SFT -> RL (EAG-RL, then the GRPO baseline) in one out dir."""
    from eagrl.mcts.stage import mcts_stage
    from eagrl.rl.stage import rl_stage
    from eagrl.sft.stage import sft_stage

    ws, _ = prepared
    cfg = _cfg(ws, "mcts.max_stays=4", "sft.eval_max_stays=6", "sft.eval_n_boot=50", "rl.eval_max_stays=6",
               "rl.eval_n_boot=50")
    mcts_stage(cfg, ws / "out-rl")
    sft = sft_stage(cfg, ws / "out-rl")
    result = rl_stage(cfg, ws / "out-rl")  # finds the SFT stage's adapter in the same out dir
    # a baseline trains beside it from the same SFT adapter, without resuming EAG-RL's checkpoints
    grpo = rl_stage(cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"variant": "grpo"})}), ws / "out-rl")
    return cfg, sft, result, grpo


def test_rl_stage_starts_from_sft_logs_every_step_and_registers_each_variant(prepared, rl_trained, tmp_path):
    import pandas as pd

    ws, _ = prepared
    cfg, sft, result, grpo = rl_trained
    assert result.metrics["train_steps"] == 2 and result.metrics["test_n_stays"] == 6
    epochs = cfg.rl.epochs_done(2, result.metrics["n_rl_stays"])  # max_steps stops it before rl.epochs: say how far
    assert result.metrics["train_epochs"] == epochs < cfg.rl.epochs
    assert f"2 steps ({epochs:.3g} epochs over {result.metrics['n_rl_stays']} stays)" in result.message
    assert result.outputs["registered_model"] == "eagrl-eag-rl-mimic-iv-demo-readmission_30d"
    for plot in ("curves", "eps_plot"):
        assert Path(result.outputs[plot]).stat().st_size > 1000

    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["eagrl.start_adapter"] == sft.outputs["adapter"]
    for key in ("rl/reward", "rl/rewards/r_cls/mean", "rl/rewards/r_att/mean", "rl/entropy", "rl/eps/mean",
                "rl/eps/max", "rl/clip_ratio/high_mean", "rl/kl_to_start", "rl/completions/mean_length"):
        assert client.get_metric_history(run.info.run_id, key), key  # logged per optimiser step
    assert [m.step for m in client.get_metric_history(run.info.run_id, "rl/loss")] == [1, 2]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"curves.png", "eps_distribution.png",
                                                                          "train_history.json", "heldout"}
    version = client.get_latest_versions("eagrl-eag-rl-mimic-iv-demo-readmission_30d")[0]
    assert version.run_id == result.mlflow_run_id
    from eagrl.scoring.keys import adapter_digest  # the start is recorded for the evaluation's lineage check
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    try:
        info = mlflow.models.get_model_info(f"models:/{version.name}/{version.version}")
    finally:
        mlflow.set_tracking_uri(None)
    assert info.metadata["start_adapter_digest"] == adapter_digest(sft.outputs["adapter"])

    assert grpo.outputs["registered_model"] == "eagrl-grpo-mimic-iv-demo-readmission_30d"
    assert Path(grpo.outputs["adapter"]).parent != Path(result.outputs["adapter"]).parent
    # trained into the same out_dir, each variant keeps its own held-out files and plots (GRPO came second)
    assert Path(grpo.outputs["heldout"]) != Path(result.outputs["heldout"])
    assert Path(grpo.outputs["curves"]) != Path(result.outputs["curves"])
    mine = pd.read_csv(Path(result.outputs["heldout"]) / "predictions.csv", dtype={"stay_id": str})
    logged = pd.read_csv(client.download_artifacts(result.mlflow_run_id, "heldout/predictions.csv", str(tmp_path)),
                         dtype={"stay_id": str})
    assert mine.equals(logged)
    assert client.get_latest_versions("eagrl-grpo-mimic-iv-demo-readmission_30d")


def test_the_rl_and_evaluation_inputs_name_the_models_they_read(prepared, rl_trained):
    """Resolved once by the stage contract: RL's start adapter (the SFT stage's, so a retrained SFT policy is a new
    input to a rerun) and the evaluation's registry versions ("latest" made a number; unregistered entries left
    out, their rows skipped), so an evaluation rerun after retraining scores the new version instead of reusing."""
    from eagrl.evaluate.stage import _inputs as evaluate_inputs
    from eagrl.rl.stage import _inputs as rl_inputs

    ws, _ = prepared
    cfg, sft, result, grpo = rl_trained
    given = {"cohort_path": None, "attention_path": None, "adapter_path": None}
    resolved = rl_inputs(cfg, ws / "out-rl", given)
    assert resolved["adapter_path"] == sft.outputs["adapter"]
    assert resolved["cohort_path"] == ws / "data" / "cohorts" / "mimic-iv-demo-readmission_30d"

    versions = evaluate_inputs(cfg, ws / "out-rl", {"cohort_path": None, "only": None, "versions": None})["versions"]
    assert versions["eag-rl"] == result.outputs["model_version"] and versions["grpo"] == grpo.outputs["model_version"]
    assert versions["sft"] == sft.outputs["model_version"] and "dapo" not in versions
    pinned = evaluate_inputs(cfg, ws / "out-rl", {"cohort_path": None, "only": ["eag-rl"], "versions": {"eag-rl": 1}})
    assert pinned["versions"] == {"eag-rl": "1"}  # the caller's pin wins; entries outside `only` are not looked up


def test_rl_rescored_with_another_cap_resumes_and_keeps_the_earlier_heldout_files(prepared, rl_trained):
    from eagrl.rl.stage import rl_stage

    ws, _ = prepared
    cfg, _, result, _ = rl_trained
    before = Path(result.outputs["heldout"]) / "predictions.csv"
    text = before.read_text()
    again = rl_stage(cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"eval_max_stays": 4})}), ws / "out-rl")
    assert Path(again.outputs["adapter"]) == Path(result.outputs["adapter"])  # the same run folder: resumed
    assert again.metrics["train_steps"] == 2 and again.metrics["test_n_stays"] == 4
    assert Path(again.outputs["heldout"]) != Path(result.outputs["heldout"])
    assert Path(again.outputs["heldout"]).name == "heldout-test-4-seed0"
    assert before.read_text() == text  # the 6-stay check is still there, unchanged


def test_the_evaluation_reuses_a_stage_s_held_out_predictions_only_for_the_same_model_stays_and_settings(
        prepared, rl_trained):
    import pandas as pd

    from eagrl.evaluate.stage import evaluate_stage

    ws, _ = prepared
    cfg, sft, result, _ = rl_trained
    version = {"eag-rl": result.outputs["model_version"]}
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")  # the copy logged with the RL run
    held = pd.read_csv(client.download_artifacts(result.mlflow_run_id, "heldout/predictions.csv", str(ws)),
                       dtype={"stay_id": str})

    def evaluated(tag: str, *sets: str):
        c = _cfg(ws, "evaluate.max_stays=6", "evaluate.robustness.models=[]", "evaluate.generalisation.models=[]",
                 "evaluate.n_boot=50", *sets)
        res = evaluate_stage(c, ws / f"out-reuse-{tag}", only=["eag-rl"], versions=version)
        table = pd.read_csv(ws / f"out-reuse-{tag}" / "evaluate" / "table.csv", keep_default_na=False)
        pred = pd.read_parquet(ws / f"out-reuse-{tag}" / "evaluate" / "models" / "eag-rl" / "predictions.parquet")
        return res, table.set_index("name").loc["eag-rl"], pred

    # the RL stage scored the same 6 stays (evaluate.seed's sample) with the same settings: read back, not generated
    res, row, pred = evaluated("same")
    assert row["reused_from"] == result.mlflow_run_id and result.mlflow_run_id in row["note"]
    assert res.metrics["n_models_reused"] == 1 and "reused from the stage runs: eag-rl" in res.message
    assert pred["stay_id"].tolist() == held["stay_id"].tolist()
    assert pred["probability"].tolist() == held["probability"].tolist()

    # scored afresh it gives the same answers (the tiny model in float32 is batch-invariant)
    _, fresh_row, fresh = evaluated("fresh", "evaluate.reuse_predictions=false")
    assert fresh_row["reused_from"] == "" and fresh["stay_id"].tolist() == pred["stay_id"].tolist()
    assert (fresh["probability"] - pred["probability"]).abs().max() < 1e-6

    # another content setting, or stays the stage never scored, or sampled decoding: generated again
    for tag, sets in (("tokens", ["generation.max_answer_tokens=6"]), ("more", ["evaluate.max_stays=10"]),
                      ("sampled", ["generation.temperature=0.7"])):
        res, row, _ = evaluated(tag, *sets)
        assert row["reused_from"] == "" and row["status"] == "scored", tag
        assert res.metrics["n_models_reused"] == 0, tag


def test_evaluation_then_promotion_follows_the_floor_and_the_champion_rule(prepared, rl_trained):
    """Promotion on this module's real candidates. The tiny policy is random: whether it clears the floor (test-AUROC
    interval above chance, not worse than the zero-shot base model on the same stays) depends on how its answers
    happen to rank these 16 stays, so the decision is checked against the floor's own numbers; promotions and
    refusals on candidates built to clear or miss the floor are in test_serve_promote.py."""
    from mlflow.exceptions import MlflowException

    from eagrl.evaluate.stage import evaluate_stage
    from eagrl.promote.stage import SOURCE_TAG, promote_stage

    ws, _ = prepared
    cfg, _, result, grpo = rl_trained
    # its evaluation goes to an experiment of its own: the reuse test, whichever runs first, then finds the RL
    # stage's held-out run as the newest that scored its stays, not this evaluation's (which covers them too)
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"experiment": "eagrl-promotion"})})
    out = ws / "out-rl"
    pinned = {"eag-rl": result.outputs["model_version"], "grpo": grpo.outputs["model_version"]}
    with pytest.raises(Exception, match="not registered entries"):
        evaluate_stage(cfg, out, only=["eag-rl"], versions={"pqd": "1"})
    # what the RL stages registered, and the zero-shot base model the floor pairs every candidate with
    ev = evaluate_stage(cfg, out, only=["pqd", "eag-rl", "grpo"], versions=pinned)
    candidate = f"models:/{result.outputs['registered_model']}/{result.outputs['model_version']}"
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")

    # a stale evaluation (not of the candidate the RL stage just registered) never decides
    with pytest.raises(DataError, match="rerun the evaluation stage"):
        promote_stage(cfg, out, candidate=f"{candidate}0")
    with pytest.raises(Exception):
        client.get_registered_model("eagrl-policy")  # nothing was registered by the refused call

    def cleared(res) -> bool:
        return res.metrics["candidate_auroc_ci"][0] > 0.5 and res.metrics["baseline_auroc_diff"] >= 0

    def holder():
        try:
            return str(client.get_model_version_by_alias("eagrl-policy", "champion").version)
        except MlflowException:
            return None

    first = promote_stage(cfg, out, candidate=candidate)
    record = json.loads(Path(first.outputs["promotion"]).read_text())
    assert first.status == "succeeded" and first.outputs["model_uri"] == "models:/eagrl-policy/1"
    ok = cleared(first)
    assert first.metrics["floor_passed"] == float(ok) == first.metrics["promoted"], first.message  # no champion yet
    assert first.message.startswith(
        f"{candidate} is models:/eagrl-policy/1: promoted to @champion (clears the promotion floor: " if ok else
        f"nothing promoted: {candidate} is registered as models:/eagrl-policy/1, not @champion: below the promotion "
        "floor: ")
    assert holder() == ("1" if ok else None) == record["champion_now"]
    served = client.get_model_version("eagrl-policy", "1")  # registered either way, with the reason
    assert served.tags[SOURCE_TAG] == candidate and served.tags["eagrl.promotion.reason"] == record["reason"]
    assert served.tags["eagrl.promotion.floor"] == ("passed" if ok else "failed")
    assert served.run_id == result.mlflow_run_id  # the RL run: its predictions and the reason are stored there
    assert client.get_run(served.run_id).data.tags["eagrl.promotion.decision"] == ("promoted" if ok else "rejected")
    assert record["n_stays"] == ev.metrics["test_n_stays"] and record["floor"]["baseline"] == "pqd"

    # a rerun of the same candidate registers no second copy, keeps the registry and decides the same
    again = promote_stage(cfg, out, candidate=candidate)
    assert again.outputs["model_uri"] == "models:/eagrl-policy/1" and again.metrics == first.metrics
    assert again.message.endswith(first.message) and holder() == ("1" if ok else None)

    # another candidate (the GRPO row): the floor, then (if there is one) the champion on the same stays
    other = promote_stage(_cfg(ws, "promote.entry=grpo", "promote.n_boot=200"), out)
    assert other.outputs["model_uri"] == "models:/eagrl-policy/2"
    tags = client.get_model_version("eagrl-policy", "2").tags
    ok2 = cleared(other)
    assert other.metrics["floor_passed"] == float(ok2)
    assert tags["eagrl.promotion.floor"] == ("passed" if ok2 else "failed")
    compared = ok2 and ok
    assert tags["eagrl.promotion.compared_with"] == ("1" if compared else "")
    wins = (json.loads(tags["eagrl.promotion.auroc_diff_ci"])[0] > 0) if compared else ok2
    assert other.metrics["promoted"] == float(wins)
    assert holder() == ("2" if wins else "1" if ok else None)
    assert tags["eagrl.promotion.decision"] == ("promoted" if wins else "rejected")

    with pytest.raises(DataError, match="no row 'dapo'"):
        promote_stage(_cfg(ws, "promote.entry=dapo"), out)
    with pytest.raises(DataError, match="no evaluation table"):
        promote_stage(cfg, ws / "out-nothing")


def test_rl_without_an_sft_adapter_says_what_to_run(prepared):
    from eagrl.rl.stage import rl_stage

    ws, _ = prepared
    cfg = _cfg(ws)
    mlflow_db = ws / "mlflow-empty.db"
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{mlflow_db}"})})
    with pytest.raises(DataError, match="run `eagrl sft` first"):
        rl_stage(cfg, ws / "out-no-sft")
