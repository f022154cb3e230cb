"""Stage 2: GRPO with the composite reward and entropy-aware adaptive clipping (EAG-RL) on TRL's GRPOTrainer.

``config`` (the ``rl`` section), ``clip`` (H(tau), eps(tau), the clipped objective), ``rollout`` (structured
rollouts and the reward functions), ``trainer`` (the GRPOTrainer subclass), ``train`` (``run_rl``) and ``run``
(``rl_stage``, the pipeline stage). Imports stay lazy: the config section is read without loading TRL.
"""
