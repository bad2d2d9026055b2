"""Framework-free core of SRLM on Dagster: config, prompts, selectors, engines, readers, CLI."""
