"""The KFP v2 pipeline, its compilation and its schedules."""
