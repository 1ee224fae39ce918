using Ublk.Aot.Ublk;
using Xunit;

namespace Ublk.Aot.Tests.Queue;

/// <summary>What --io-mode resolves to, against the feature words seen on the two kernels the VM runs (AGENTS.md).</summary>
public sealed class IoModeResolveTests
{
    private const ulong Trixie612 = 0x1fe;       // GET_FEATURES on 6.12.117
    private const ulong Backports73 = 0x1fffff;  // GET_FEATURES on 7.3.4
    private static readonly IoMode[] File = [IoMode.AutoBufReg, IoMode.ZeroCopy, IoMode.Copy, IoMode.UserCopy];
    private static readonly IoMode[] Null = [IoMode.UserCopy, IoMode.Copy, IoMode.ZeroCopy, IoMode.AutoBufReg];
    private static readonly IoMode[] Mem = [IoMode.Copy, IoMode.UserCopy];

    private static IoMode? Resolve(IoMode m, IoMode[] modes, ulong features, bool fixedBuffers, out string? error)
        => IoModes.Resolve(m, modes, "file:x", features, fixedBuffers, "6.12.117", out error);

    [Theory]
    [InlineData(Trixie612, false, IoMode.Copy)]
    [InlineData(Backports73, false, IoMode.AutoBufReg)]
    [InlineData(Backports73, true, IoMode.Copy)]
    [InlineData(0x1UL | 0x40, false, IoMode.ZeroCopy)] // zero copy without AUTO_BUF_REG (6.15)
    public void Auto_for_file(ulong features, bool fixedBuffers, IoMode expect)
    {
        Assert.Equal(expect, Resolve(IoMode.Auto, File, features, fixedBuffers, out string? e));
        Assert.Null(e);
    }

    [Theory]
    [InlineData(Trixie612, IoMode.UserCopy)]
    [InlineData(Backports73, IoMode.UserCopy)]
    [InlineData(0x40UL, IoMode.Copy)] // before 6.5: no USER_COPY
    public void Auto_for_null(ulong features, IoMode expect) => Assert.Equal(expect, Resolve(IoMode.Auto, Null, features, false, out _));

    [Fact]
    public void Refusals_name_what_is_missing()
    {
        Assert.Null(Resolve(IoMode.ZeroCopy, File, Trixie612, false, out string? e));
        Assert.Equal("--io-mode zero-copy needs UBLK_F_SUPPORT_ZERO_COPY, which this kernel (6.12.117, ublk features 0x1fe) does not have", e);
        Assert.Null(Resolve(IoMode.AutoBufReg, File, Trixie612, false, out e));
        Assert.Contains("needs UBLK_F_SUPPORT_ZERO_COPY + UBLK_F_AUTO_BUF_REG", e);
        Assert.Null(Resolve(IoMode.ZeroCopy, Mem, Backports73, false, out e));
        Assert.Equal("--io-mode zero-copy: the file:x backend cannot use it (it has copy, user-copy)", e);
        Assert.Null(Resolve(IoMode.ZeroCopy, File, Backports73, true, out e));
        Assert.Contains("--fixed-buffers", e);
        Assert.Equal(IoMode.UserCopy, Resolve(IoMode.UserCopy, File, Trixie612, false, out _));
    }

    [Fact]
    public void A_device_keeps_its_mode_through_its_flags()
    {
        foreach (IoMode m in new[] { IoMode.Copy, IoMode.UserCopy, IoMode.ZeroCopy, IoMode.AutoBufReg })
            Assert.Equal(m, IoModes.OfDeviceFlags(IoModes.Flags(m) | 0x40));
    }
}
