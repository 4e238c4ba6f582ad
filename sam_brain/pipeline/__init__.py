"""The data pipeline: validate, scrub, deduplicate, split and store collected samples."""
