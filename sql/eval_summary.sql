-- Accuracy per checkpoint x benchmark (arm 'base', iteration -1 is the base model), at the smallest number of
-- voted samples (one by default) with its 95% Wilson interval, and at the largest; accuracy_norm is
-- lm-evaluation-harness's acc_norm (null for generate); delta_base is the change against the base model.
-- Paired differences between checkpoints, with their intervals, are in eval.comparison.
WITH per_n AS (
    SELECT checkpoint_id, arm, iteration, benchmark, protocol, n_samples,
           count(*) AS questions, avg(CAST(correct AS DOUBLE)) AS accuracy,
           avg(CAST(correct_norm AS DOUBLE)) AS accuracy_norm
    FROM evals
    GROUP BY ALL
),
summary AS (
    SELECT checkpoint_id, arm, iteration, benchmark, protocol,
           arg_min(questions, n_samples) AS questions,
           arg_min(accuracy, n_samples) AS accuracy,
           arg_min_null(accuracy_norm, n_samples) AS accuracy_norm,
           max(n_samples) AS max_samples,
           arg_max(accuracy, n_samples) AS accuracy_at_max_samples
    FROM per_n
    GROUP BY ALL
),
wilson AS (  -- z = 1.96
    SELECT *, (accuracy + 1.9208 / questions) / (1 + 3.8416 / questions) AS centre,
           1.96 * sqrt(accuracy * (1 - accuracy) / questions + 0.9604 / (questions * questions)) / (1 + 3.8416 / questions) AS half
    FROM summary
)
SELECT checkpoint_id, arm, iteration, benchmark, protocol, questions, accuracy,
       centre - half AS accuracy_low, centre + half AS accuracy_high, accuracy_norm, max_samples, accuracy_at_max_samples,
       CASE WHEN arm <> 'base'
            THEN accuracy - max(CASE WHEN arm = 'base' THEN accuracy END) OVER (PARTITION BY benchmark)
       END AS delta_base
FROM wilson
ORDER BY benchmark, iteration, arm
