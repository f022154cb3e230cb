"""The MLflow pyfunc class of a registered policy (logged as "models from code" by eagrl.llm.registry)."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel

from eagrl.config.llm import GenerationConfig, ModelConfig


class PolicyModel(PythonModel):
    """Base model + LoRA adapter; ``predict`` maps a list of user prompts to completions (chat template applied)."""

    def load_context(self, context) -> None:
        from eagrl.llm.backends import make_backend

        spec = json.loads(Path(context.artifacts["policy"]).read_text())
        model_cfg = ModelConfig(**{**spec["model"], "adapter": context.artifacts["adapter"], "merge_adapter": True})
        self.gen_cfg = GenerationConfig(**spec["generation"])
        self.backend = make_backend(model_cfg, self.gen_cfg.model_copy(update={"backend": "transformers"}))

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        from eagrl.llm.backends import SamplingParams

        prompts = [str(p) for p in model_input]
        params = params or {}
        sampling = SamplingParams(max_tokens=int(params.get("max_tokens", 128)),
                                  temperature=float(params.get("temperature", 0.0)))
        tok = self.backend.tokenizer
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
                 if getattr(tok, "chat_template", None) else p for p in prompts]
        ids = [tok.encode(t, add_special_tokens=False) for t in texts]
        return [group[0].text for group in self.backend.generate(ids, sampling, n=1, seed=0)]


mlflow.models.set_model(PolicyModel())
