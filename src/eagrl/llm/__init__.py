"""The policy-model layer every LLM stage shares: MCTS, SFT, RL, evaluation and serving speak one format. It holds
no stage and no tracking; its settings are ``ModelConfig`` and ``GenerationConfig`` (:mod:`eagrl.config.llm`).

* :mod:`~eagrl.llm.loading`: SmolLM2 from its PyPI wheel (GGUF -> safetensors, cached), local dirs, hub ids,
  MLflow models, LoRA adapters, and the ``tiny`` random model of the tests;
* :mod:`~eagrl.llm.prompt`: P_QD / vanilla / think-then-answer prompts from a cohort patient;
* :mod:`~eagrl.llm.parse`: the never-raising response parser and feature-name matching;
* :mod:`~eagrl.llm.rewards`: R_att, R_cls and the composite reward;
* :mod:`~eagrl.llm.backends`: one generation interface, transformers (KV-cache reuse) and vLLM;
* :mod:`~eagrl.llm.structured`: structured generation (framework-written tags, probability read-out, mask).
"""
