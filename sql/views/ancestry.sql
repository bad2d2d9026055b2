-- For every candidate, its whole chain of ancestors: depth 0 is the candidate itself, depth k its k-th
-- parent rationale; the chain ends at the original example (ancestor_id = example_id, is_original).
WITH RECURSIVE chain(candidate_id, depth, ancestor_id) AS (
    SELECT candidate_id, 0, candidate_id FROM {union:candidates}
    UNION ALL
    SELECT chain.candidate_id, chain.depth + 1, c.parent_id
    FROM chain JOIN {union:candidates} AS c ON c.candidate_id = chain.ancestor_id
)
SELECT chain.candidate_id,
       chain.depth,
       chain.ancestor_id,
       a.arm,
       a.iteration,
       a.checkpoint_id,
       a.parent_id,
       a.text,
       a.candidate_id IS NULL AS is_original
FROM chain LEFT JOIN {union:candidates} AS a ON a.candidate_id = chain.ancestor_id
