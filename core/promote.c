/*
 * core/promote.c — promotion between tiers (seed 003): the decision.
 *
 * An entry hit often in a slower tier should move up. Moving costs a copy,
 * so placement must not flap: a candidate is promoted only when the faster
 * tier has room for it, or when the weakest resident there scores below
 * the floor and the candidate beats it by at least the hysteresis gap; and
 * neither may have moved within the cooldown. Scores come from a pluggable
 * scorer in [0, 1]; the default maps the decayed hit score s to 1 − 2^(−s),
 * so one recent hit rates 0.5 and a hot entry approaches 1.
 *
 * This file holds the pure decision (kvshm_promote_plan); the reaper feeds
 * it the residents and candidates of adjacent tiers and carries out the
 * moves (file tiers: core/tier.c).
 */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

KVSHM_EXTERN void kvshm_promote_config_init(kvshm_promote_config *c)
{
	c->floor = 0.5;
	c->gap = 0.2;
	c->cooldown_s = 300.0;
	c->scorer = NULL;
	c->scorer_ctx = NULL;
}

static bool cooling(const kvshm_promote_config *c, const kvshm_promote_cand *x)
{
	return x->since_move_s >= 0.0 && x->since_move_s < c->cooldown_s;
}

static const kvshm_promote_cand *sort_base;

static int by_score_asc(const void *a, const void *b)
{
	double x = sort_base[*(const size_t *)a].score, y = sort_base[*(const size_t *)b].score;
	return x < y ? -1 : x > y;
}

KVSHM_EXTERN size_t kvshm_promote_plan(const kvshm_promote_config *c, const kvshm_promote_cand *res, size_t nres,
				       const kvshm_promote_cand *cands, size_t ncand, uint64_t free_bytes,
				       uint32_t *out_promote, uint32_t *out_demote, size_t max_moves)
{
	size_t moves = 0;
	size_t *ri = malloc((nres + 1) * sizeof(size_t));
	size_t *ci = malloc((ncand + 1) * sizeof(size_t));
	bool *used = calloc(nres + 1, 1);
	if (!ri || !ci || !used)
		goto out;
	for (size_t i = 0; i < nres; i++)
		ri[i] = i;
	for (size_t i = 0; i < ncand; i++)
		ci[i] = i;
	/* Not reentrant across threads (qsort has no context argument); the
	 * plan is computed by one thread at a time in practice. */
	sort_base = res;
	qsort(ri, nres, sizeof(size_t), by_score_asc);
	sort_base = cands;
	qsort(ci, ncand, sizeof(size_t), by_score_asc);

	/* Strongest candidates first. */
	for (size_t k = ncand; k-- > 0 && moves < max_moves;) {
		const kvshm_promote_cand *x = &cands[ci[k]];
		if (cooling(c, x))
			continue;
		if (x->bytes <= free_bytes) {
			out_promote[moves] = x->id;
			out_demote[moves] = UINT32_MAX;
			free_bytes -= x->bytes;
			moves++;
			continue;
		}
		/* Displace the weakest eligible resident below the floor. */
		for (size_t j = 0; j < nres; j++) {
			const kvshm_promote_cand *w = &res[ri[j]];
			if (used[ri[j]] || cooling(c, w))
				continue;
			if (w->score >= c->floor || x->score < w->score + c->gap)
				break; /* residents are ascending: none weaker remains */
			if (w->bytes + free_bytes < x->bytes)
				continue;
			used[ri[j]] = true;
			out_promote[moves] = x->id;
			out_demote[moves] = w->id;
			free_bytes = free_bytes + w->bytes - x->bytes;
			moves++;
			break;
		}
	}
out:
	free(ri);
	free(ci);
	free(used);
	return moves;
}
