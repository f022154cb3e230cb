"""The ConCare expert: model, training, attention export and the ``train_expert`` stage."""
from eagrl.expert.config import ExpertConfig

__all__ = ["ExpertConfig"]
