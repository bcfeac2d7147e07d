SELECT true AS allowed, 'allow'::text AS decision, NULL::text AS reason, 'requests_per_minute'::text AS limit_name,
       59::bigint AS remaining, NULL::bigint AS retry_after_ms, '00000001-8cec-418b-b5e5-8dbab2f50dd1'::uuid AS reservation_id;
