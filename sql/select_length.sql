-- Selector "length": per example, the longest non-degenerate candidate (degenerate text scores -inf and
-- is never kept). Ties: the higher likelihood score, then the lower sample index, then candidate_id.
-- Optional $margin: keep the winner only if it beats its parent rationale's length by more than $margin.
SELECT c.example_id, c.iteration, c.candidate_id, 'length' AS selector,
       s.length AS score, p.length AS parent_score, c.parent_id, CAST($margin AS DOUBLE) AS margin
FROM candidates AS c
JOIN scores AS s ON s.candidate_id = c.candidate_id AND s.role = 'candidate'
LEFT JOIN scores AS p ON p.candidate_id = c.parent_id AND p.example_id = c.example_id AND p.role = 'parent'
WHERE isfinite(s.length)
  AND ($margin IS NULL OR s.length > coalesce(p.length, '-inf'::DOUBLE) + $margin)
QUALIFY row_number() OVER (
    PARTITION BY c.example_id
    ORDER BY s.length DESC, s.likelihood DESC NULLS LAST, c.sample_index, c.candidate_id
) = 1
ORDER BY c.example_id
