/*
 * Bench tooling, not part of the extension: the floor of an admission over the wire.
 *
 * bench_noop_admit(subject text, tokens bigint, model text, feature text, max_output_tokens bigint)
 *     RETURNS control_plane.admission
 *
 * Same signature and result type as control_plane.cp_admit, and forms its row the same way
 * (the declared composite type, looked up through the type cache, one heap tuple), but decides
 * nothing: a constant admission. bench/run.sh builds it with PGXS and compares cp_admit with it.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"
#include "utils/uuid.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(bench_noop_admit);

Datum
bench_noop_admit(PG_FUNCTION_ARGS)
{
	static const unsigned char id[UUID_LEN] = {0, 0, 0, 1, 0x8c, 0xec, 0x41, 0x8b,
											   0xb5, 0xe5, 0x8d, 0xba, 0xb2, 0xf5, 0x0d, 0xd1};
	Oid			typid = get_fn_expr_rettype(fcinfo->flinfo);
	TupleDesc	desc;
	Datum		values[8];
	bool		nulls[8] = {false, false, true, false, false, true, false, true};
	pg_uuid_t  *uuid;
	HeapTuple	tuple;

	if (!OidIsValid(typid))
		typid = get_func_rettype(fcinfo->flinfo->fn_oid);
	desc = lookup_rowtype_tupdesc(typid, -1);
	uuid = (pg_uuid_t *) palloc(sizeof(pg_uuid_t));
	memcpy(uuid->data, id, UUID_LEN);
	values[0] = BoolGetDatum(true);
	values[1] = CStringGetTextDatum("allow");
	values[2] = (Datum) 0;
	values[3] = CStringGetTextDatum("requests_per_minute");
	values[4] = Int64GetDatum(59);
	values[5] = (Datum) 0;
	values[6] = UUIDPGetDatum(uuid);
	values[7] = (Datum) 0;		/* model: NULL, as cp_admit returns it for a call without one */
	tuple = heap_form_tuple(desc, values, nulls);
	DecrTupleDescRefCount(desc);
	return HeapTupleHeaderGetDatum(tuple->t_data);
}
