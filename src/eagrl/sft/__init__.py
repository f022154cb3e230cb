"""Stage 1, second half: supervised fine-tuning (LoRA) of the policy on the MCTS-selected trajectories."""
from eagrl.sft.config import SFTConfig

__all__ = ["SFTConfig"]
