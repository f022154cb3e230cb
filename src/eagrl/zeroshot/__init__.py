"""The zero-shot stage: the base model's prompting baselines scored on a split (:mod:`eagrl.zeroshot.stage`)."""
