"""Model engines: generation, scoring (log-probabilities) and LoRA training behind one small interface."""
