"""Stage 2: GRPO with the composite reward and entropy-aware adaptive clipping (EAG-RL) on TRL's GRPOTrainer.

``clip`` (H(tau), eps(tau), the clipped objective), ``rollout`` (structured rollouts and the reward functions),
``trainer`` (the GRPOTrainer subclass), ``train`` (``run_rl``) and ``stage`` (``rl_stage``, the pipeline stage).
The ``rl`` section is :mod:`eagrl.config.rl`, read without loading TRL.
"""
