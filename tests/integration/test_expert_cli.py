"""`eagrl expert train / evaluate / export-attention` on the real TJH cohort in a throw-away workspace (the commands
called in this process: the subprocess path is covered by the other CLI tests)."""
import json

import pandas as pd
from support.cli import call_cli

SMALL = ["--set", "expert.hidden=16", "--set", "expert.heads=2", "--set", "expert.max_epochs=3",
         "--set", "expert.min_epochs=1", "--set", "expert.n_boot=100", "--set", "expert.progress=false"]


def test_expert_commands_on_tjh(shared_data, workspace):
    common = ["--dataset", "tjh", "--task", "mortality", "--workspace", str(workspace), "--out", str(workspace / "out")]
    missing = call_cli("expert", "train", *common, *SMALL)
    assert missing.returncode != 0 and "eagrl data prepare" in missing.stderr  # no cohort yet: say what to run

    assert call_cli("data", "prepare", *common, "--data-path", str(shared_data / "tjh")).returncode == 0
    trained = call_cli("expert", "train", *common, *SMALL)
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((workspace / "out" / "expert" / "metrics.json").read_text())
    lo, hi = metrics["test_auroc_ci"]
    assert 0.5 < metrics["test_auroc"] <= 1 and lo <= metrics["test_auroc"] <= hi

    evaluated = call_cli("expert", "evaluate", *common, "--split", "val")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    val = json.loads((workspace / "out" / "expert-evaluate" / "metrics.json").read_text())
    assert abs(val["val_auroc"] - metrics["val_auroc"]) < 1e-9  # the registered checkpoint is the best epoch

    exported = call_cli("expert", "export-attention", *common, "--set", "expert.top_k=3")
    assert exported.returncode == 0, exported.stderr[-2000:]
    att = pd.read_parquet(workspace / "out" / "expert-attention" / "attention.parquet")
    assert att["c_exp"].map(len).max() == 3 and len(att) == 323

    other = call_cli("expert", "evaluate", "--dataset", "mimic-iv-demo", "--workspace", str(workspace),
                    "--out", str(workspace / "out2"),
                    "--model", str(workspace / "data" / "expert" / "tjh-mortality" / "model.pt"))
    assert other.returncode != 0 and "eagrl: error:" in other.stderr
