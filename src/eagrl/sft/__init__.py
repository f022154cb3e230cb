"""Stage 1, second half: supervised fine-tuning (LoRA) of the policy on the MCTS-selected trajectories, and the direct
fine-tune of the answer slot; the pipeline stages are in :mod:`eagrl.sft.stage`."""
