-- Accuracy per checkpoint x benchmark (the base model is iteration -1), at one sample and at the largest
-- number of voted samples, with the change against the previous iteration and against the base model.
WITH per_n AS (
    SELECT checkpoint_id, iteration, benchmark, protocol, n_samples,
           count(*) AS questions, avg(CAST(correct AS DOUBLE)) AS accuracy
    FROM evals
    GROUP BY ALL
),
summary AS (
    SELECT checkpoint_id, iteration, benchmark, protocol,
           arg_min(questions, n_samples) AS questions,
           arg_min(accuracy, n_samples) AS accuracy,
           max(n_samples) AS max_samples,
           arg_max(accuracy, n_samples) AS accuracy_at_max_samples
    FROM per_n
    GROUP BY ALL
)
SELECT checkpoint_id, iteration, benchmark, protocol, questions, accuracy, max_samples, accuracy_at_max_samples,
       accuracy - lag(accuracy) OVER (PARTITION BY benchmark ORDER BY iteration) AS delta_previous,
       CASE WHEN iteration > -1
            THEN accuracy - max(CASE WHEN iteration = -1 THEN accuracy END) OVER (PARTITION BY benchmark)
       END AS delta_base
FROM summary
ORDER BY benchmark, iteration
