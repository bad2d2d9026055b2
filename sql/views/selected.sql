-- The candidate each iteration kept per example, with the selector, its score and its parent's score.
SELECT * FROM {union:selected}
