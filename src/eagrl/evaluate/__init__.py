"""The last stage: the comparison table on one split (every registered model and the baselines), robustness,
generalisation, paired tests and the HTML report (:mod:`eagrl.evaluate.stage`). The metrics it and every other
stage compute are in :mod:`eagrl.metrics`."""
