-- Runs first: installs the extension into the regression database.
CREATE EXTENSION control_plane;
SELECT extname, extversion IS NOT NULL AS has_version FROM pg_extension WHERE extname = 'control_plane';
SELECT name, is_default, requests_per_minute, requests_per_day, input_tokens_per_month,
       output_tokens_per_month, daily_budget_cents
  FROM control_plane.profiles ORDER BY requests_per_day NULLS LAST;
