"""The ConCare expert: the model, its training (``fit``), attention export (C_exp) and the pipeline stage
(:mod:`eagrl.expert.stage`)."""
