-- Selector "likelihood": per example, the candidate that most raises the mean log-probability of the
-- reference response (score = mean log p(y | x, r) - mean log p(y | x)). Degenerate candidates (length
-- score -inf: empty, cut off, repetitive) are never kept, nor are NaN / infinite scores. Ties: the longer rationale, then the lower sample index, then candidate_id.
-- Optional $margin: keep the winner only if its gain beats its parent rationale's gain by more than $margin.
SELECT c.example_id, c.iteration, c.candidate_id, 'likelihood' AS selector,
       s.likelihood AS score, p.likelihood AS parent_score, c.parent_id, CAST($margin AS DOUBLE) AS margin
FROM candidates AS c
JOIN scores AS s ON s.candidate_id = c.candidate_id AND s.role = 'candidate'
LEFT JOIN scores AS p ON p.candidate_id = c.parent_id AND p.example_id = c.example_id AND p.role = 'parent'
WHERE isfinite(s.likelihood) AND isfinite(s.length)
  AND ($margin IS NULL OR s.likelihood > coalesce(p.likelihood, '-inf'::DOUBLE) + $margin)
QUALIFY row_number() OVER (
    PARTITION BY c.example_id
    ORDER BY s.likelihood DESC, c.n_tokens DESC, c.sample_index, c.candidate_id
) = 1
ORDER BY c.example_id
