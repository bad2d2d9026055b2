-- Per-question evaluation rows of the base model (iteration -1) and every checkpoint.
SELECT * FROM {union:base_model,eval}
