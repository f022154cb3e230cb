"""Predictions already scored, found again by what produced them, so no policy is scored twice on the same stays.

The zero-shot stage scores the base model, and the SFT and RL stages score their trained policy, on held-out
stays with the same routine the evaluation uses (:func:`eagrl.scoring.policy.evaluate_zero_shot`). Each tags the
MLflow run that holds those predictions with a **scoring key**: a digest of everything that decides what the
responses say (the base model and its dtype, the adapter's weights, the generation settings except the
throughput-only ones, the cohort's content digest, the split, the eagrl version). The evaluation computes the
same key for each table row; a finished run with that key whose predictions cover the evaluation's stays is
read back instead of generating them again, and the row's note names that run.

Only deterministic decoding is reused (temperature 0 and the expected-value read-out). Greedy responses then
depend on the stay alone, up to float rounding: in bfloat16 a stay decoded beside other stays can round
differently, so a reused prediction can differ from a fresh one by about what a rerun with other batches
gives. ``evaluate.reuse_predictions: false`` scores every row afresh.

Written by hand: MLflow has no cache of predictions keyed by their inputs; this is a search over run tags.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from eagrl.config.llm import GenerationConfig, ModelConfig

log = logging.getLogger(__name__)

KEY_TAG = "eagrl.predictions_key"
PATH_TAG = "eagrl.predictions_path"  # the artifact folder of the tagged run that holds predictions.csv
FILES = ("predictions.csv", "responses.jsonl")
_WEIGHT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def deterministic(gen_cfg: GenerationConfig) -> bool:
    """Greedy decoding with the expected-value read-out: a stay's response depends on the stay alone."""
    return gen_cfg.temperature == 0 and not gen_cfg.sample_readout


def adapter_digest(folder: str | Path) -> str:
    """md5 of a LoRA adapter's config and weights (the files that decide what it computes)."""
    root = Path(folder)
    h = hashlib.md5()
    found = [root / n for n in _WEIGHT_FILES if (root / n).is_file()]
    if not any(f.name != "adapter_config.json" for f in found):
        raise FileNotFoundError(f"{root} holds no adapter weights ({', '.join(_WEIGHT_FILES[1:])})")
    for f in found:
        h.update(f.name.encode())
        h.update(_normalised_config(f) if f.name == "adapter_config.json" else f.read_bytes())
    return h.hexdigest()


def _normalised_config(path: Path) -> bytes:
    """An adapter config's content, independent of how it was written: peft writes ``target_modules`` from a set, in
    an order that changes from one Python process to the next; lists of names are sorted, keys too."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v for k, v in cfg.items()}
    return json.dumps(cfg, sort_keys=True).encode()


def scoring_key(model_cfg: ModelConfig, gen_cfg: GenerationConfig, cohort_md5: str, split: str) -> str | None:
    """The key of scoring ``model_cfg`` (its ``adapter``: a local folder) with ``gen_cfg`` on a cohort's split;
    None where predictions must not be reused (sampled decoding, a model named by a path only, no adapter weights)."""
    from eagrl import __version__

    if not deterministic(gen_cfg):
        return None
    model = model_cfg.weights()
    if Path(model_cfg.source).is_dir():
        return None  # a folder's name says nothing about the weights in it
    adapter = None
    if model_cfg.adapter:
        try:
            adapter = adapter_digest(model_cfg.adapter)
        except FileNotFoundError:  # a models:/ URI, or no weights: loading it says what is wrong
            return None
    spec = {"eagrl": __version__, "model": model, "adapter": adapter,
            "generation": gen_cfg.content(),
            "cohort": cohort_md5, "split": split}
    return hashlib.md5(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def tag_scored(key: str | None, artifact_path: str) -> None:
    """Mark the active MLflow run as holding predictions for ``key`` under ``artifact_path``."""
    import mlflow

    if key is not None and mlflow.active_run() is not None:
        mlflow.set_tags({KEY_TAG: key, PATH_TAG: artifact_path})


def tag_heldout(model_cfg: ModelConfig, adapter_dir: str | Path, gen_cfg: GenerationConfig, cohort_md5: str,
                split: str, artifact_path: str = "heldout", style: str = "pqd") -> None:
    """Tag the active stage run with the key of its held-out check (:func:`eagrl.scoring.policy.evaluate_trained`)."""
    from eagrl.scoring.policy import heldout_generation

    tag_scored(
        scoring_key(
            model_cfg.model_copy(update={"adapter": str(adapter_dir)}),
            heldout_generation(gen_cfg, style),
            cohort_md5,
            split,
        ),
        artifact_path,
    )


@dataclass
class Reused:
    run_id: str
    n_scored: int  # stays that run scored (the reused ones are a subset)


def find_scored(experiment_id: str, key: str | None, stay_ids: list[str], dest: str | Path) -> Reused | None:
    """Write into ``dest`` the predictions and responses of ``stay_ids`` (in that order) from the newest finished
    run tagged with ``key`` that scored all of them; None when there is none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if key is None:
        return None
    client = mlflow.MlflowClient()
    try:
        runs = client.search_runs([experiment_id], f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=20)
    except MlflowException as exc:
        log.warning("no reuse of predictions: searching MLflow failed: %s", exc)
        return None
    wanted = [str(s) for s in stay_ids]
    for run in runs:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id, artifact_path=run.data.tags.get(PATH_TAG, ""), dst_path=tmp))
            except (MlflowException, OSError) as exc:
                log.warning("run %s is tagged with predictions that cannot be read: %s", run.info.run_id, exc)
                continue
            if not all((local / f).is_file() for f in FILES):
                continue
            pred = pd.read_csv(local / "predictions.csv", dtype={"stay_id": str}, keep_default_na=False)
            if not set(wanted) <= set(pred["stay_id"]):
                continue
            _write_subset(local, pred, wanted, Path(dest))
            return Reused(run.info.run_id, len(pred))
    return None


def _write_subset(src: Path, pred: pd.DataFrame, wanted: list[str], dest: Path) -> None:
    from eagrl.scoring.policy import SAMPLES

    dest.mkdir(parents=True, exist_ok=True)
    (dest / SAMPLES).unlink(missing_ok=True)  # an earlier sampled scoring's, not of the one-response predictions
    pred.set_index("stay_id").loc[wanted].reset_index().to_csv(dest / "predictions.csv", index=False)
    texts = {}
    for line in (src / "responses.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            texts[str(rec["stay_id"])] = line
    with open(dest / "responses.jsonl", "w", encoding="utf-8") as fh:
        for s in wanted:
            if s in texts:
                fh.write(texts[s] + "\n")
