/*
 * echo-bench: the latency histogram (per thread, merged at the end).
 */
#include "config.h"

#include "bench.h"

/*
 * Log-linear buckets, as in HdrHistogram: values below 2^HIST_SUB are
 * exact; above, every power of two is cut into 2^HIST_SUB equal buckets,
 * so any value is known within 1/128 (0.8%) over the whole 64-bit range,
 * in a fixed 58 KiB per thread.
 */

static unsigned
hist_index(uint64_t v)
{
	unsigned shift;

	if (v < (1u << HIST_SUB))
		return (unsigned)v;
	shift = 63 - __builtin_clzll(v) - HIST_SUB;
	return ((shift + 1) << HIST_SUB) +
	    (unsigned)((v >> shift) - (1u << HIST_SUB));
}

/* The middle of bucket I. */
static double
hist_value(unsigned i)
{
	unsigned shift;
	uint64_t lo;

	if (i < (1u << HIST_SUB))
		return i;
	shift = (i >> HIST_SUB) - 1;
	lo = ((uint64_t)(i & ((1u << HIST_SUB) - 1)) + (1u << HIST_SUB)) << shift;
	return lo + ((1ULL << shift) - 1) / 2.0;
}

void
hist_add(struct hist *h, uint64_t v)
{
	h->count[hist_index(v)]++;
	h->total++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

void
hist_merge(struct hist *to, const struct hist *from)
{
	unsigned i;

	for (i = 0; i < HIST_N; i++)
		to->count[i] += from->count[i];
	to->total += from->total;
	to->sum += from->sum;
	if (from->max > to->max)
		to->max = from->max;
}

/* The value at quantile Q, in the same unit as what was added. */
double
hist_quantile(const struct hist *h, double q)
{
	uint64_t want, cum = 0;
	unsigned i;
	double v;

	if (h->total == 0)
		return NAN;
	want = (uint64_t)ceil(q * (double)h->total);
	if (want == 0)
		want = 1;
	for (i = 0; i < HIST_N; i++) {
		cum += h->count[i];
		if (cum >= want)
			break;
	}
	v = hist_value(i);
	return v > (double)h->max ? (double)h->max : v;
}

