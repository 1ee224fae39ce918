using System;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Ublk;

/// <summary>How request data travels between the block layer's pages and the backend (serve --io-mode).</summary>
public enum IoMode : byte
{
    /// <summary>Not a mode: the fastest one this kernel and this backend allow (<see cref="IoModes.Resolve"/>).</summary>
    Auto = 0,
    /// <summary>The kernel copies each request into (WRITE) or out of (READ) a per-tag user buffer (6.0).</summary>
    Copy,
    /// <summary>UBLK_F_USER_COPY (6.5): the server moves the data itself with read/write on /dev/ublkcN at the
    /// (queue, tag) offset, through its io_uring; no per-tag buffer unless the backend needs one to bounce through.</summary>
    UserCopy,
    /// <summary>UBLK_F_SUPPORT_ZERO_COPY (6.15): each request's pages become an io_uring fixed buffer
    /// (REGISTER_IO_BUF linked before the backend's I/O, UNREGISTER_IO_BUF before the commit).</summary>
    ZeroCopy,
    /// <summary>UBLK_F_AUTO_BUF_REG (6.16): the kernel installs the pages at the tag's fixed-buffer index before it
    /// hands the request over and removes them at the commit; a request it could not register arrives with
    /// UBLK_IO_F_NEED_REG_BUF and is registered by hand (zero-copy path, counted).</summary>
    AutoBufReg,
}

/// <summary>The io modes' names, flags and the choice <c>auto</c> makes.</summary>
public static class IoModes
{
    /// <summary>The --io-mode words, in <see cref="IoMode"/> order.</summary>
    public static readonly string[] Names = ["auto", "copy", "user-copy", "zero-copy", "auto-buf-reg"];

    public static string Name(IoMode m) => Names[(int)m];

    public static IoMode? Parse(string word)
    {
        int i = Array.IndexOf(Names, word);
        return i < 0 ? null : (IoMode)i;
    }

    /// <summary>The UBLK_F_* flags a mode asks ADD_DEV for. AUTO_BUF_REG comes with SUPPORT_ZERO_COPY: the
    /// fallback for a request the kernel could not register is a REGISTER_IO_BUF, which needs it.</summary>
    public static ulong Flags(IoMode m) => m switch
    {
        IoMode.UserCopy => UBLK_F_USER_COPY,
        IoMode.ZeroCopy => UBLK_F_SUPPORT_ZERO_COPY,
        IoMode.AutoBufReg => UBLK_F_AUTO_BUF_REG | UBLK_F_SUPPORT_ZERO_COPY,
        _ => 0,
    };

    /// <summary>The mode an existing device was created with, from its flags (for a recovering server).</summary>
    public static IoMode OfDeviceFlags(ulong flags)
        => (flags & UBLK_F_AUTO_BUF_REG) != 0 ? IoMode.AutoBufReg
         : (flags & UBLK_F_SUPPORT_ZERO_COPY) != 0 ? IoMode.ZeroCopy
         : (flags & UBLK_F_USER_COPY) != 0 ? IoMode.UserCopy
         : IoMode.Copy;

    /// <summary>The mode moves data through fixed buffers installed from the request's pages.</summary>
    public static bool IsZeroCopy(IoMode m) => m is IoMode.ZeroCopy or IoMode.AutoBufReg;

    /// <summary>
    /// The mode to serve with: <paramref name="requested"/> if the backend and the kernel allow it, or for
    /// <see cref="IoMode.Auto"/> the first of the backend's preferences the kernel has. --fixed-buffers registers
    /// the tag buffers in the queue's one buffer table, so it rules out the zero-copy modes. Null with
    /// <paramref name="error"/> (one line) when the requested mode cannot be had.
    /// </summary>
    public static IoMode? Resolve(IoMode requested, IoMode[] backendModes, string backendName, ulong kernelFeatures,
        bool fixedBuffers, string kernelRelease, out string? error)
    {
        error = null;
        if (requested == IoMode.Auto)
        {
            foreach (IoMode m in backendModes)
            {
                if (fixedBuffers && IsZeroCopy(m)) continue;
                if ((kernelFeatures & Flags(m)) == Flags(m)) return m;
            }
            return IoMode.Copy;
        }
        if (Array.IndexOf(backendModes, requested) < 0)
        {
            error = "--io-mode " + Name(requested) + ": the " + backendName + " backend cannot use it (it has " + List(backendModes) + ")";
            return null;
        }
        if (fixedBuffers && IsZeroCopy(requested))
        {
            error = "--fixed-buffers registers tag buffers, which --io-mode " + Name(requested) + " does not have";
            return null;
        }
        ulong want = Flags(requested);
        if ((kernelFeatures & want) != want)
        {
            error = "--io-mode " + Name(requested) + " needs " + FeatureList(want & ~kernelFeatures) + UblkDevice.NotInKernel(kernelFeatures, kernelRelease);
            return null;
        }
        return requested;
    }

    private static string List(IoMode[] modes)
    {
        var names = new string[modes.Length];
        for (int i = 0; i < modes.Length; i++) names[i] = Name(modes[i]);
        return string.Join(", ", names);
    }

    /// <summary>"UBLK_F_A + UBLK_F_B" for the bits of <paramref name="flags"/>.</summary>
    public static string FeatureList(ulong flags)
    {
        var names = new System.Collections.Generic.List<string>();
        for (int bit = 0; bit < FeatureNames.Length; bit++)
            if ((flags & (1UL << bit)) != 0) names.Add("UBLK_F_" + FeatureNames[bit]);
        return string.Join(" + ", names);
    }
}
