using System;
using System.Runtime.InteropServices;
using Ublk.Aot.Interop;
using Xunit;

namespace Ublk.Aot.Tests.Integration;

/// <summary>/dev/ublkbN (or any file) opened for aligned pread/pwrite; O_DIRECT by default.</summary>
public sealed unsafe class BlockDevice : IDisposable
{
    public int Fd { get; private set; }
    public string Path { get; }

    public BlockDevice(string path, bool direct = true, bool write = true)
    {
        Path = path;
        Fd = Libc.Open(path, (write ? Libc.O_RDWR : Libc.O_RDONLY) | Libc.O_CLOEXEC | (direct ? Libc.O_DIRECT : 0), 0);
        Assert.True(Fd >= 0, "open(" + path + ") failed: " + Errno.Name(Errno.Last));
    }

    public ulong Size
    {
        get
        {
            ulong size;
            Assert.True(Libc.Ioctl(Fd, Libc.BLKGETSIZE64, &size) == 0, "BLKGETSIZE64 on " + Path + ": " + Errno.Name(Errno.Last));
            return size;
        }
    }

    /// <summary>pwrite of <paramref name="data"/> through a page-aligned bounce buffer; returns bytes or -errno.</summary>
    public long TryWrite(ReadOnlySpan<byte> data, long offset)
    {
        void* buf = NativeMemory.AlignedAlloc((nuint)Math.Max(data.Length, 4096), 4096);
        try
        {
            data.CopyTo(new Span<byte>(buf, data.Length));
            nint n = Libc.PWrite(Fd, buf, (nuint)data.Length, offset);
            return n < 0 ? -Errno.Last : n;
        }
        finally { NativeMemory.AlignedFree(buf); }
    }

    /// <summary>pread into <paramref name="dest"/> through a page-aligned bounce buffer; returns bytes or -errno.</summary>
    public long TryRead(Span<byte> dest, long offset)
    {
        void* buf = NativeMemory.AlignedAlloc((nuint)Math.Max(dest.Length, 4096), 4096);
        try
        {
            nint n = Libc.PRead(Fd, buf, (nuint)dest.Length, offset);
            if (n > 0) new Span<byte>(buf, (int)n).CopyTo(dest);
            return n < 0 ? -Errno.Last : n;
        }
        finally { NativeMemory.AlignedFree(buf); }
    }

    public void Write(ReadOnlySpan<byte> data, long offset)
    {
        long n = TryWrite(data, offset);
        Assert.True(n == data.Length, "pwrite(" + Path + ", " + data.Length + " bytes at " + offset + ") = " + (n < 0 ? Errno.Name((int)n) : n.ToString()));
    }

    public byte[] Read(int length, long offset)
    {
        var b = new byte[length];
        long n = TryRead(b, offset);
        Assert.True(n == length, "pread(" + Path + ", " + length + " bytes at " + offset + ") = " + (n < 0 ? Errno.Name((int)n) : n.ToString()));
        return b;
    }

    public void Dispose()
    {
        if (Fd >= 0) { Libc.Close(Fd); Fd = -1; }
    }

    /// <summary>"" if equal, else a message naming the first differing byte.</summary>
    public static string Diff(string what, long baseOffset, ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual)
    {
        int n = Math.Min(expected.Length, actual.Length);
        for (int i = 0; i < n; i++)
        {
            if (expected[i] != actual[i])
            {
                int len = Math.Min(16, n - i);
                return what + ": first difference at offset " + (baseOffset + i) + ": expected " +
                    Convert.ToHexString(expected.Slice(i, len)) + ", actual " + Convert.ToHexString(actual.Slice(i, len));
            }
        }
        return expected.Length == actual.Length ? "" : what + ": length " + actual.Length + " != " + expected.Length;
    }
}
