-- Is the method at work? Per generation (arm, iteration): how long the candidates are against the parent
-- rationales they rewrote, how many mark meta-reasoning skills, how many follow the task (not degenerate and
-- longer than the parent), how many raise the reference response's likelihood more than the parent did,
-- and how often every selector keeps the same candidate.
WITH cand AS (
    SELECT c.arm, c.iteration, c.example_id, c.skills, s.n_tokens, s.degenerate, s.likelihood
    FROM candidates AS c
    JOIN scores AS s ON s.candidate_id = c.candidate_id AND s.role = 'candidate' AND s.arm = c.arm AND s.iteration = c.iteration
),
parent AS (
    SELECT arm, iteration, example_id, n_tokens, likelihood FROM scores WHERE role = 'parent'
),
per_example AS (
    SELECT arm, iteration, example_id,
           count(*) = (SELECT count(DISTINCT selector) FROM selector_choices) AND count(DISTINCT candidate_id) = 1 AS all_agree
    FROM selector_choices GROUP BY ALL
),
agreement AS (
    SELECT arm, iteration, count(*) FILTER (WHERE all_agree) AS agreeing_examples FROM per_example GROUP BY ALL
)
SELECT cand.arm, cand.iteration,
       count(DISTINCT cand.example_id) AS examples,
       count(*) AS candidates,
       round(avg(cand.n_tokens), 1) AS mean_candidate_tokens,
       round(avg(parent.n_tokens), 1) AS mean_parent_tokens,
       round(avg(CAST(cand.skills <> '' AS DOUBLE)), 3) AS share_with_skill_markers,
       round(avg(CAST(cand.degenerate IS NULL AND cand.n_tokens > parent.n_tokens AS DOUBLE)), 3) AS share_longer_not_degenerate,
       round(avg(CAST(isfinite(cand.likelihood) AND cand.likelihood > parent.likelihood AS DOUBLE)), 3) AS share_likelihood_beats_parent,
       round(coalesce(any_value(agreement.agreeing_examples), 0) / count(DISTINCT cand.example_id), 3) AS share_selectors_agree
FROM cand
JOIN parent USING (arm, iteration, example_id)
LEFT JOIN agreement USING (arm, iteration)
GROUP BY cand.arm, cand.iteration
ORDER BY cand.arm, cand.iteration
