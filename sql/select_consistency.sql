-- Selector "consistency": per example, the medoid: the candidate with the highest mean similarity to the
-- other candidates of the same example (free-text self-consistency). Degenerate candidates (length score
-- -inf) are left out so that shared repetition cannot win. Ties: the longer rationale, then the lower
-- sample index, then candidate_id.
-- Optional $margin: keep the winner only if it beats its parent's similarity to the candidates by more than $margin.
SELECT c.example_id, c.iteration, c.candidate_id, 'consistency' AS selector,
       s.consistency AS score, p.consistency AS parent_score, c.parent_id, CAST($margin AS DOUBLE) AS margin
FROM candidates AS c
JOIN scores AS s ON s.candidate_id = c.candidate_id AND s.role = 'candidate'
LEFT JOIN scores AS p ON p.candidate_id = c.parent_id AND p.example_id = c.example_id AND p.role = 'parent'
WHERE isfinite(s.consistency) AND isfinite(s.length)
  AND ($margin IS NULL OR s.consistency > coalesce(p.consistency, '-inf'::DOUBLE) + $margin)
QUALIFY row_number() OVER (
    PARTITION BY c.example_id
    ORDER BY s.consistency DESC, c.n_tokens DESC, c.sample_index, c.candidate_id
) = 1
ORDER BY c.example_id
