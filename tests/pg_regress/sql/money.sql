-- Prices: what a bad price row gets, which row is in force, and the cost cp_record_usage stores
-- (integer micro-units, rounded up).
INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('mona', 'unlimited');

-- bad prices: negative, above one unit per token, missing, empty model
\set VERBOSITY terse
INSERT INTO control_plane.model_prices (model, input_micros_per_million, output_micros_per_million)
VALUES ('m-bad', -1, 0);
INSERT INTO control_plane.model_prices (model, input_micros_per_million, output_micros_per_million)
VALUES ('m-bad', 0, 1000000000001);
INSERT INTO control_plane.model_prices (model, input_micros_per_million) VALUES ('m-bad', 1);
INSERT INTO control_plane.model_prices (model, input_micros_per_million, output_micros_per_million)
VALUES ('', 1, 1);
\set VERBOSITY default

-- a shared price since always, and the tenant's own from a fixed instant
INSERT INTO control_plane.model_prices
    (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
VALUES ('*', 'm-mini', 150000, 600000, '-infinity'),
       ('default', 'm-mini', 1000000, 2000000, '2020-01-01 00:00+00'),
       ('default', 'm-mini', 9000000, 9000000, 'infinity');

-- 1,000 + 1,000 tokens at the tenant's price in force (1.00 and 2.00 per million): 3000
SELECT cost_micros FROM control_plane.cp_record_usage('mona', 1000, 1000, model => 'm-mini');
-- another tenant pays the shared price (0.15 and 0.60 per million): 750; and 3 + 1 tokens are
-- 0.45 + 0.60 = 1.05 micro-units, rounded up to 2
SET control_plane.tenant = 'other';
INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('mona', 'unlimited');
SELECT cost_micros FROM control_plane.cp_record_usage('mona', 1000, 1000, model => 'm-mini');
SELECT cost_micros FROM control_plane.cp_record_usage('mona', 3, 1, model => 'm-mini');
RESET control_plane.tenant;
-- an unpriced model, and no model: no cost (NULL), never a made-up zero
SELECT cost_micros FROM control_plane.cp_record_usage('mona', 10, 10, model => 'm-unpriced');
SELECT cost_micros FROM control_plane.cp_record_usage('mona', 10, 10);

SELECT tenant_id, subject_id, model, input_tokens, output_tokens, cost_micros
  FROM control_plane.usage_events WHERE subject_id = 'mona' ORDER BY id;
