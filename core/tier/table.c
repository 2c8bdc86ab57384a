/*
 * core/tier/table.c — the registry of tiers: which table serves tier t
 * (kvshm_tier's values, fastest first), and the few things asked of every
 * tier at once (names, whether one is on, default quotas, the seed at
 * creation, closing a handle); and the remote tier's table, which is not
 * a kvshm_tier (it keeps no segment entry). Not any tier's own behaviour,
 * which is in its file (core/tier/ram.c, core/tier/file*.c,
 * core/tier/remote*.c).
 */
#include "core/tier/tier.h"

static const struct kvshm__tier_ops *const tiers[KVSHM_NTIERS] = {
	[KVSHM_TIER_RAM] = &kvshm__ram_ops,
	[KVSHM_TIER_RAM_FILE] = &kvshm__ram_file_ops,
	[KVSHM_TIER_DISK] = &kvshm__disk_ops,
};

const struct kvshm__tier_ops *kvshm__tier(int tier)
{
	return tiers[tier];
}

const struct kvshm__tier_ops *kvshm__tier_or_null(int tier)
{
	return tier >= 0 && tier < KVSHM_NTIERS ? tiers[tier] : NULL;
}

const char *kvshm__tier_name(int tier)
{
	const struct kvshm__tier_ops *t = kvshm__tier_or_null(tier);
	return t ? t->name : "?";
}

bool kvshm__tier_on(const kvshm *h, int tier)
{
	const struct kvshm__tier_ops *t = kvshm__tier_or_null(tier);
	return t && t->enabled(h->cfg, tier);
}

uint64_t kvshm__tier_default_quota(int tier, uint64_t segment_bytes, const char *dir)
{
	return tiers[tier]->default_quota(tier, segment_bytes, dir);
}

int kvshm__tiers_prepare(struct kvshm__cfg *n)
{
	/* The slowest first: the disk tier's seed wins (it outlives
	 * everything); else ram_file's. */
	for (int t = KVSHM_NTIERS - 1; t >= 0; t--) {
		if (!tiers[t]->prepare || !tiers[t]->enabled(n, t))
			continue;
		int r = tiers[t]->prepare(n, t);
		if (r != 0)
			return r < 0 ? r : 0;
	}
	return 0;
}

void kvshm__tiers_close(kvshm *h)
{
	for (int t = 0; t < KVSHM_NTIERS; t++)
		if (tiers[t]->close)
			tiers[t]->close(h, t);
	kvshm__remote_ops.close(h, KVSHM_NTIERS);
}

const struct kvshm__tier_ops *kvshm__tier_remote(void)
{
	return &kvshm__remote_ops;
}

bool kvshm__remote_on(const kvshm *h)
{
	return kvshm__remote_ops.enabled(h->cfg, KVSHM_NTIERS);
}
