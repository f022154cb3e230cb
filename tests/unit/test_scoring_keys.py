"""The adapter digest behind the scoring key and the RL run key: what an adapter computes, not how it was written."""
from __future__ import annotations

import json

import pytest

from eagrl.scoring.keys import adapter_digest


def _adapter(folder, targets, notes="", weights=b"\x00\x01weights"):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32, "target_modules": targets}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "sft_config.json").write_text(json.dumps({"cache_dir": notes}))  # a stage's notes beside the adapter
    return folder


def test_the_digest_ignores_the_order_peft_wrote_the_modules_in_and_the_notes_beside_them(tmp_path):
    a = adapter_digest(_adapter(tmp_path / "a", ["q_proj", "k_proj", "v_proj"], notes="/one/workspace"))
    b = adapter_digest(_adapter(tmp_path / "b", ["v_proj", "q_proj", "k_proj"], notes="/another/workspace"))
    assert a == b
    # what the adapter computes still changes it: other modules, other weights
    assert adapter_digest(_adapter(tmp_path / "c", ["q_proj", "k_proj"])) != a
    assert adapter_digest(_adapter(tmp_path / "d", ["q_proj", "k_proj", "v_proj"], weights=b"other")) != a


def test_a_folder_without_weights_is_an_error_naming_it(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        adapter_digest(tmp_path)
