"""EHR data: source loaders, the canonical cohort, validation and versioning."""
