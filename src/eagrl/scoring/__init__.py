"""Scoring a policy on a cohort split (:mod:`~eagrl.scoring.policy`), shared by the zero-shot, SFT, RL and evaluation
stages, and the scoring key that lets a stage reuse predictions already made (:mod:`~eagrl.scoring.keys`)."""
