using System;
using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace Ublk.Aot.Ublk;

/// <summary>The bucket counts of a <see cref="LatencyHistogram"/>, inline in the struct (no array, nothing to allocate).</summary>
[InlineArray(LatencyHistogram.BucketCount)]
public struct LatencyBuckets
{
    private long _first;
}

/// <summary>
/// Request latency of one queue (from the request's arrival at the server to its commit), in fixed log2-spaced
/// buckets: bucket i counts latencies in (2^(i-1) µs, 2^i µs], bucket 0 everything up to 1 µs, and the last one
/// (<see cref="FiniteBuckets"/>) everything above 2^27 µs (134 s). Written by the queue thread only: one
/// leading-zero count, one increment, one add and one compare per request; no lock, no allocation.
/// </summary>
public struct LatencyHistogram
{
    /// <summary>Buckets with an upper bound: 1 µs, 2 µs, 4 µs … 2^27 µs (134.2 s).</summary>
    public const int FiniteBuckets = 28;
    /// <summary>The finite buckets plus the overflow bucket (above the last bound; Prometheus' le="+Inf" part).</summary>
    public const int BucketCount = FiniteBuckets + 1;

    public LatencyBuckets Buckets;
    public long SumNs;
    public long MaxNs;

    /// <summary>Upper bound of bucket <paramref name="i"/> (&lt; <see cref="FiniteBuckets"/>) in microseconds: 2^i.</summary>
    public static long UpperBoundUs(int i) => 1L << i;

    /// <summary>Upper bound of bucket <paramref name="i"/> (&lt; <see cref="FiniteBuckets"/>) in nanoseconds.</summary>
    public static long UpperBoundNs(int i) => 1000L << i;

    /// <summary>The bucket of a latency: the smallest i with ns ≤ 1000·2^i, or the overflow bucket.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Index(long ns)
    {
        if (ns <= 1000) return 0;
        // ns ≤ 1000·2^i ⇔ ceil(ns / 1000) ≤ 2^i (2^i is whole): i = bit length of ceil(ns/1000) - 1.
        ulong us = ((ulong)ns + 999) / 1000;
        int i = 64 - BitOperations.LeadingZeroCount(us - 1);
        return i < FiniteBuckets ? i : FiniteBuckets;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Record(long ns)
    {
        if (ns < 0) ns = 0;
        Buckets[Index(ns)]++;
        SumNs += ns;
        if (ns > MaxNs) MaxNs = ns;
    }

    /// <summary>Requests recorded (the sum of the buckets).</summary>
    public readonly long Count
    {
        get
        {
            long n = 0;
            for (int i = 0; i < BucketCount; i++) n += Buckets[i];
            return n;
        }
    }

    /// <summary>Adds another histogram (a device's total over its queues).</summary>
    public void Add(in LatencyHistogram other)
    {
        for (int i = 0; i < BucketCount; i++) Buckets[i] += other.Buckets[i];
        SumNs += other.SumNs;
        if (other.MaxNs > MaxNs) MaxNs = other.MaxNs;
    }

    /// <summary>
    /// The latency below which a fraction <paramref name="q"/> (0 &lt; q ≤ 1) of the requests fell, estimated from the
    /// buckets as Prometheus' histogram_quantile does: the bucket holding the rank, linear inside it, with 0 as the
    /// lower bound of the first bucket and the largest latency seen as the upper bound of the overflow bucket. Never
    /// more than <see cref="MaxNs"/>. 0 when nothing was recorded.
    /// </summary>
    public readonly double PercentileNs(double q)
    {
        long count = Count;
        if (count == 0) return 0;
        if (q >= 1) return MaxNs;
        double rank = q * count;
        long below = 0;
        for (int i = 0; i < BucketCount; i++)
        {
            long n = Buckets[i];
            if (n == 0 || below + n < rank) { below += n; continue; }
            double lo = i == 0 ? 0 : UpperBoundNs(i - 1);
            double hi = i < FiniteBuckets ? UpperBoundNs(i) : Math.Max(MaxNs, lo);
            double v = lo + (hi - lo) * ((rank - below) / n);
            // A snapshot taken while the queue writes may see a bucket before the max that belongs to it.
            return MaxNs > 0 ? Math.Min(v, MaxNs) : v;
        }
        return MaxNs;
    }
}

/// <summary>
/// Whether the queues time each request (the latency histogram). On by default; UBLK_AOT_NO_LATENCY=1 in the
/// server's environment turns it off (a benchmark knob: the A/B "do the counters cost anything", matrix.sh's
/// aot-null-copy-nolat). Read once, when the first queue is made; the other counters stay on either way.
/// </summary>
public static class LatencyTiming
{
    public static readonly bool Enabled = Environment.GetEnvironmentVariable("UBLK_AOT_NO_LATENCY") != "1";

    /// <summary>Nanoseconds per <see cref="Stopwatch.GetTimestamp"/> tick (1 on Linux, where the clock counts ns).</summary>
    public static readonly double NsPerTick = 1e9 / Stopwatch.Frequency;
}
