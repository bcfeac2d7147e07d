-- Recording usage settles the reservation; committed usage shows in cp_quota_status; a
-- released reservation gives its request back.
INSERT INTO control_plane.subjects (subject_id, profile, overrides)
VALUES ('carol', 'starter', '{"requests_per_day": 2, "requests_per_second": null}');

SELECT reservation_id AS r1 FROM control_plane.cp_admit('carol', 500, model => 'gpt-4o-mini') \gset
SELECT event_id > 0 AS recorded, cost_micros, reservation_settled
  FROM control_plane.cp_record_usage('carol', 420, 80, model => 'gpt-4o-mini',
                                     reservation_id => :'r1', metadata => '{"route": "/chat"}');
SELECT reservation_id AS r2 FROM control_plane.cp_admit('carol', 100) \gset
SELECT allowed, limit_name FROM control_plane.cp_admit('carol', 0);
SELECT control_plane.cp_release(:'r2') AS released, control_plane.cp_release(:'r2') AS released_twice;
SELECT allowed FROM control_plane.cp_admit('carol', 0);

SELECT s->>'profile' AS profile,
       (s->'quotas'->'requests_per_day') - 'window' AS requests_per_day,
       s->'quotas'->'input_tokens_per_day' AS input_tokens_per_day,
       s->'quotas'->'output_tokens_per_day' AS output_tokens_per_day,
       s->'rate_limits' AS rate_limits
  FROM control_plane.cp_quota_status('carol') s;

SELECT subject_id, model, input_tokens, output_tokens, metadata
  FROM control_plane.usage_events WHERE subject_id = 'carol' ORDER BY id;

-- the ledger is append-only
UPDATE control_plane.usage_events SET input_tokens = 0;
DELETE FROM control_plane.usage_events WHERE subject_id = 'carol';
TRUNCATE control_plane.usage_events;
