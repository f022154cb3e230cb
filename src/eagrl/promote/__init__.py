"""Promotion: the paired-bootstrap decision (:mod:`~eagrl.promote.decision`) and the pipeline's last stage, which
moves the champion alias (:mod:`~eagrl.promote.stage`)."""
