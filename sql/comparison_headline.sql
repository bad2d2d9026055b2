-- The answer an experiment exists for: each SRLM arm's last checkpoint against each baseline (sft, and the
-- self-training arms' last checkpoints), per benchmark and N, on accuracy, as one sentence each.
SELECT arm, reference, benchmark, n_samples, verdict, sentence
FROM comparison AS c
WHERE relation IN ('vs_sft', 'vs_self_train') AND arm LIKE 'srlm/%' AND metric = 'acc'
  AND iteration = (SELECT max(iteration) FROM comparison AS d WHERE d.arm = c.arm)
ORDER BY arm, relation, benchmark, n_samples
