-- Three rewritten rationales per generation (arm, iteration) beside the parent rationale each one rewrote:
-- for each example the candidate kept by the most selectors, the first three examples by id.
WITH kept AS (
    SELECT arm, iteration, example_id, candidate_id,
           count(*) AS selectors, string_agg(selector, ', ' ORDER BY selector) AS kept_by
    FROM selector_choices GROUP BY ALL
),
best AS (
    SELECT * FROM kept
    QUALIFY row_number() OVER (PARTITION BY arm, iteration, example_id ORDER BY selectors DESC, candidate_id) = 1
),
parent_text AS (
    SELECT rationale_id, any_value(rationale) AS text FROM training_examples WHERE task = 'answer' GROUP BY rationale_id
)
SELECT b.arm, b.iteration, b.example_id, b.kept_by, coalesce(p.text, '') AS parent, c.text AS candidate
FROM best AS b
JOIN candidates AS c ON c.candidate_id = b.candidate_id AND c.arm = b.arm AND c.iteration = b.iteration
LEFT JOIN parent_text AS p ON p.rationale_id = c.parent_id
QUALIFY row_number() OVER (PARTITION BY b.arm, b.iteration ORDER BY b.example_id) <= 3
ORDER BY b.arm, b.iteration, b.example_id
