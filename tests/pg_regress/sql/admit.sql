-- Admission against calendar quotas: exactly N admitted, then a denial with the reason, the
-- limit and the time to the end of the window; a denial consumes nothing.
INSERT INTO control_plane.subjects (subject_id, profile, overrides)
VALUES ('alice', 'free', '{"requests_per_day": 3, "input_tokens_per_day": 1000, "requests_per_second": null, "max_concurrent": null}');

SELECT allowed, decision, reason, limit_name, remaining, retry_after_ms IS NULL AS no_retry,
       reservation_id IS NOT NULL AS reserved
  FROM control_plane.cp_admit('alice', 100, model => 'gpt-4o-mini');
SELECT allowed, decision, limit_name, remaining FROM control_plane.cp_admit('alice', 100);
-- too many tokens for what is left: denied, and nothing is taken
SELECT allowed, decision, reason, limit_name, remaining,
       abs(retry_after_ms - (extract(epoch FROM date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC') + interval '1 day') - extract(epoch FROM clock_timestamp() AT TIME ZONE 'UTC')) * 1000) < 5000 AS retry_is_time_to_midnight
  FROM control_plane.cp_admit('alice', 900);
SELECT allowed, decision, reason, limit_name, remaining FROM control_plane.cp_admit('alice', 100);
SELECT allowed, decision, reason, limit_name, remaining,
       abs(retry_after_ms - (extract(epoch FROM date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC') + interval '1 day') - extract(epoch FROM clock_timestamp() AT TIME ZONE 'UTC')) * 1000) < 5000 AS retry_is_time_to_midnight,
       reservation_id IS NULL AS nothing_reserved
  FROM control_plane.cp_admit('alice', 0);

-- a request that can never fit gets no retry time
SELECT allowed, reason, limit_name, retry_after_ms FROM control_plane.cp_admit('alice', 5000);

-- rate limits: the free plan allows one request per second
SELECT allowed, reason FROM control_plane.cp_admit('frank', 0);
SELECT allowed, reason, limit_name, retry_after_ms BETWEEN 900 AND 1000 AS retry_is_the_rest_of_the_second
  FROM control_plane.cp_admit('frank', 0);

-- concurrency: requests in flight
INSERT INTO control_plane.subjects (subject_id, profile, overrides)
VALUES ('gina', 'unlimited', '{"max_concurrent": 1}');
SELECT reservation_id AS g1 FROM control_plane.cp_admit('gina') \gset
SELECT allowed, reason, limit_name, retry_after_ms BETWEEN 595000 AND 600000 AS retry_is_when_the_oldest_expires
  FROM control_plane.cp_admit('gina');
SELECT control_plane.cp_release(:'g1') AS released;
SELECT allowed FROM control_plane.cp_admit('gina');

-- models and inactive subjects
SELECT allowed, reason FROM control_plane.cp_admit('bob', 0, model => 'some-big-model');
UPDATE control_plane.subjects SET active = false WHERE subject_id = 'bob';
SELECT allowed, reason FROM control_plane.cp_admit('bob', 0, model => 'gpt-4o-mini');

-- unknown subjects are enrolled in the default profile
SELECT subject_id, profile, active FROM control_plane.subjects ORDER BY subject_id;
