-- Every selector score of every iteration; role = 'candidate', or 'parent' for the rationale a candidate enriched.
SELECT * FROM {union:scores}
