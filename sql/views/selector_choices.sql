-- What each selector keeps per example, every iteration (one row per example and selector that keeps one):
-- compare selectors; `selected` holds only the configured selector's rows.
SELECT * FROM {union:selector_choices}
