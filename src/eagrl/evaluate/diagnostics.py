"""Two diagnostics of every LLM row: whether it ranks patients the wrong way round, and whether its answers copy
numbers it wrote.

* ``auroc_inverted``: the AUROC of 1 - p, with its interval over the table's resamples. Above 0.5 where the row's
  AUROC is below it: the row carries signal, ranked the wrong way round (a chance-level row stays near 0.5 both
  ways).
* ``copy_share``: the share of responses whose final answer copies a number written earlier in the response.
  The answer is the text inside the last ``<final_answer>...</final_answer>``; the earlier text is everything
  before that tag. A numeric answer (the digit readout writes ``0.83``) is a copy where the earlier text holds a
  number of the same value to two decimals (``0.83``, ``.83``), or a decimal fraction ``0.d...`` (``.d...``) with
  the same first digit after the point (``0.8``, ``0.87``). An answer that is not a number (the yes/no readout
  writes ``yes``/``no``), or a response without ``<final_answer>``, copies nothing. Percentages and integers
  count only by value (``83`` is not ``0.83``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from eagrl.errors import DataError
from eagrl.llm.parse import FINAL
from eagrl.metrics import evaluate_binary, evaluate_means

_OPEN, _CLOSE = f"<{FINAL}>", f"</{FINAL}>"
_NUMBER = re.compile(r"(?<![\d.])(\d*)\.(\d+)|(?<![\d.])(\d+)(?![\d]|\.\d)")  # fraction | integer, sign-less
_ANSWER = re.compile(r"(\d*)\.(\d+)|(\d+)")


def _numbers(text: str) -> list[tuple[str, str]]:
    """(integer part, decimals) of every number written in ``text`` ("" decimals for an integer)."""
    return [(m.group(1), m.group(2)) if m.group(2) is not None else (m.group(3), "") for m in _NUMBER.finditer(text)]


def _value(whole: str, decimals: str) -> float:
    return float(f"{whole or '0'}.{decimals or '0'}")


def copies_number(text: str) -> bool:
    """Whether the response's final answer copies a number written before it (see the module docstring)."""
    start = text.rfind(_OPEN)
    if start < 0:
        return False
    end = text.find(_CLOSE, start)
    answer = text[start + len(_OPEN):end if end >= 0 else len(text)].strip()
    m = _ANSWER.fullmatch(answer)
    if m is None:
        return False
    whole, decimals = (m.group(1), m.group(2)) if m.group(2) is not None else (m.group(3), "")
    value = round(_value(whole, decimals), 2)
    fraction = whole in ("", "0") and decimals != ""  # 0.d...: its first digit may be copied on its own
    for w, d in _numbers(text[:start]):
        if round(_value(w, d), 2) == value:
            return True
        if fraction and w in ("", "0") and d and d[0] == decimals[0]:
            return True
    return False


def copied_per_stay(responses: str | Path, stay_ids: list[str]) -> pd.Series | None:
    """The share of each stay's responses (``responses.jsonl``: one line a response) whose answer copies a number,
    indexed like ``stay_ids``; None when the file is missing. A stay without a response is a DataError."""
    path = Path(responses)
    if not path.is_file():
        return None
    flags: dict[str, list[bool]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            flags.setdefault(str(rec["stay_id"]), []).append(copies_number(str(rec["text"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{n}: not a response record with stay_id and text ({exc})") from None
    missing = [s for s in stay_ids if s not in flags]
    if missing:
        raise DataError(f"{path} has no response for stays {missing[:5]}")
    return pd.Series([float(np.mean(flags[s])) for s in stay_ids], index=list(stay_ids), name="copied")


def llm_diagnostics(pred: pd.DataFrame, *, n_boot: int, ci: float, seed: int) -> dict[str, float | list[float]]:
    """``auroc_inverted`` (and its interval) of the predictions; ``copy_share`` (and its interval over stays) where
    ``pred`` has the per-stay ``copied`` share."""
    y = pred["label"].to_numpy(dtype=np.float64)
    p = pred["probability"].to_numpy(dtype=np.float64)
    res = evaluate_binary(y, 1.0 - p, metrics=("auroc",), n_boot=n_boot, ci=ci, seed=seed)
    out: dict[str, float | list[float]] = {"auroc_inverted": res["auroc"]}
    if "auroc_ci" in res:
        out["auroc_inverted_ci"] = res["auroc_ci"]
    if "copied" in pred:
        shares = evaluate_means({"copy_share": pred["copied"].to_numpy(dtype=np.float64)}, n_boot=n_boot, ci=ci,
                                seed=seed)
        out.update(shares)
    return out
