-- Inference-time scaling: accuracy of the majority vote over N sampled answers, per checkpoint x benchmark
-- (generate protocol; loglikelihood is deterministic and has N = 1 only).
SELECT checkpoint_id, arm, iteration, benchmark, n_samples,
       count(*) AS questions, avg(CAST(correct AS DOUBLE)) AS accuracy
FROM evals
WHERE protocol = 'generate'
GROUP BY ALL
ORDER BY benchmark, iteration, arm, n_samples
