using System;
using Ublk.Aot.Ublk;
using Xunit;

namespace Ublk.Aot.Tests.Queue;

/// <summary>The queue's latency buckets: the index math at every bound, the percentile estimate, no allocation.</summary>
public sealed class LatencyHistogramTests
{
    [Fact]
    public void Every_bound_falls_in_its_own_bucket_and_one_ns_more_in_the_next()
    {
        Assert.Equal(0, LatencyHistogram.Index(0));
        Assert.Equal(0, LatencyHistogram.Index(1));
        Assert.Equal(0, LatencyHistogram.Index(1000));
        Assert.Equal(1, LatencyHistogram.Index(1001));
        Assert.Equal(1, LatencyHistogram.Index(2000));
        Assert.Equal(2, LatencyHistogram.Index(2001));
        for (int i = 0; i < LatencyHistogram.FiniteBuckets; i++)
        {
            long bound = LatencyHistogram.UpperBoundNs(i);
            Assert.Equal(1000L << i, bound);
            Assert.Equal(i, LatencyHistogram.Index(bound));
            Assert.Equal(i + 1, LatencyHistogram.Index(bound + 1));
            if (i > 0) Assert.Equal(i, LatencyHistogram.Index(LatencyHistogram.UpperBoundNs(i - 1) + 1));
        }
        // The last bound is 2^27 µs = 134.2 s; anything above is the overflow bucket, however large.
        Assert.Equal(134_217_728_000L, LatencyHistogram.UpperBoundNs(LatencyHistogram.FiniteBuckets - 1));
        Assert.Equal(LatencyHistogram.FiniteBuckets, LatencyHistogram.Index(long.MaxValue));
        Assert.Equal(LatencyHistogram.BucketCount - 1, LatencyHistogram.Index(3_600_000_000_000L));
    }

    [Fact]
    public void Index_agrees_with_a_plain_search_over_the_bounds()
    {
        var rnd = new Random(42);
        for (int k = 0; k < 200_000; k++)
        {
            long ns = k < 5000 ? k : (long)Math.Exp(rnd.NextDouble() * 27); // up to ~5e11 ns
            int expect = LatencyHistogram.FiniteBuckets;
            for (int i = 0; i < LatencyHistogram.FiniteBuckets; i++)
                if (ns <= LatencyHistogram.UpperBoundNs(i)) { expect = i; break; }
            Assert.Equal(expect, LatencyHistogram.Index(ns));
        }
    }

    [Fact]
    public void Record_counts_sums_and_keeps_the_max()
    {
        LatencyHistogram h = default;
        h.Record(500);
        h.Record(1500);
        h.Record(1500);
        h.Record(-7); // a clock step backwards counts as 0, never a negative sum
        Assert.Equal(4, h.Count);
        Assert.Equal(3500, h.SumNs);
        Assert.Equal(1500, h.MaxNs);
        Assert.Equal(2, h.Buckets[0]);
        Assert.Equal(2, h.Buckets[1]);
    }

    [Fact]
    public void Percentiles_interpolate_inside_the_bucket_and_never_exceed_the_max()
    {
        LatencyHistogram h = default;
        Assert.Equal(0, h.PercentileNs(0.5)); // nothing recorded
        for (int i = 0; i < 90; i++) h.Record(10_000);    // 10 µs: bucket (8, 16] µs
        for (int i = 0; i < 10; i++) h.Record(1_000_000); // 1 ms: bucket (512, 1024] µs
        // p50: rank 50 of the 90 in (8000, 16000] ns → 8000 + 8000 * 50/90.
        Assert.Equal(8000 + 8000 * 50.0 / 90, h.PercentileNs(0.5), 6);
        // p90: rank 90, the last of the first bucket → its upper bound.
        Assert.Equal(16_000, h.PercentileNs(0.9), 6);
        // p99: rank 99, 9 of the 10 in (512000, 1024000] → 972800 (below the max of 1 ms).
        Assert.Equal(512_000 + 512_000 * 0.9, h.PercentileNs(0.99), 6);
        // p99.9 would be 1,018,880 by the bucket; the largest latency seen caps it.
        Assert.Equal(1_000_000, h.PercentileNs(0.999), 6);
        Assert.Equal(1_000_000, h.PercentileNs(1.0), 6);

        // Beyond the last bound: the overflow bucket's upper end is the max.
        LatencyHistogram slow = default;
        slow.Record(200_000_000_000L); // 200 s
        Assert.Equal(1, slow.Buckets[LatencyHistogram.FiniteBuckets]);
        Assert.InRange(slow.PercentileNs(0.5), LatencyHistogram.UpperBoundNs(LatencyHistogram.FiniteBuckets - 1), 200_000_000_000.0);
        Assert.Equal(134_217_728_000 + (200_000_000_000.0 - 134_217_728_000) * 0.99, slow.PercentileNs(0.99), 3);
        Assert.Equal(200_000_000_000.0, slow.PercentileNs(1.0), 6);
    }

    [Fact]
    public void Add_merges_queues()
    {
        LatencyHistogram a = default, b = default;
        a.Record(900);
        b.Record(3000);
        b.Record(70_000);
        a.Add(b);
        Assert.Equal(3, a.Count);
        Assert.Equal(73_900, a.SumNs);
        Assert.Equal(70_000, a.MaxNs);
    }

    [Fact]
    public void Recording_allocates_nothing()
    {
        LatencyHistogram h = default;
        h.Record(1);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (long i = 0; i < 100_000; i++) h.Record(i * 37);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
        Assert.Equal(100_001, h.Count);
    }
}
