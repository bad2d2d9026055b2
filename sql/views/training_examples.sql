-- What each checkpoint was trained on: answering examples (with their rationale) and catalyst enriching examples.
SELECT * FROM {union:training_examples}
