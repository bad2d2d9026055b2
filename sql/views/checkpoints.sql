-- The base model (iteration -1) and every fine-tuned checkpoint.
SELECT * FROM {union:base,checkpoint}
