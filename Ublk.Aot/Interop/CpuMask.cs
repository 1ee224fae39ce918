using System;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace Ublk.Aot.Interop;

/// <summary>
/// A CPU bit mask of 1024 CPUs (glibc's cpu_set_t), the layout both sched_setaffinity and ublk's
/// GET_QUEUE_AFFINITY use. Blittable: pass its address with <see cref="Size"/>.
/// </summary>
[InlineArray(Words)]
public struct CpuMask
{
    public const int Words = 16;
    public const int MaxCpus = Words * 64;
    public const int Size = Words * sizeof(ulong);

    private ulong _word;

    /// <summary>The mask holding <paramref name="cpus"/> (numbers outside 0..1023 are left out).</summary>
    public static CpuMask Of(ReadOnlySpan<int> cpus)
    {
        CpuMask m = default;
        foreach (int c in cpus) if (c >= 0 && c < MaxCpus) m[c >> 6] |= 1UL << (c & 63);
        return m;
    }

    /// <summary>The CPUs set in the mask, ascending.</summary>
    public readonly int[] ToCpus()
    {
        int n = 0;
        for (int i = 0; i < Words; i++) n += BitOperations.PopCount(this[i]);
        int[] cpus = new int[n];
        n = 0;
        for (int c = 0; c < MaxCpus; c++) if ((this[c >> 6] & (1UL << (c & 63))) != 0) cpus[n++] = c;
        return cpus;
    }
}
