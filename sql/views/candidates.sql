-- Every enriched candidate of every iteration (iteration column inside each table).
SELECT * FROM {union:candidates}
