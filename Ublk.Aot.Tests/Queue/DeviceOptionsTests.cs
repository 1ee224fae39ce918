using System;
using Ublk.Aot.Abi;
using Ublk.Aot.Ublk;
using Xunit;

namespace Ublk.Aot.Tests.Queue;

/// <summary>The one validation of device options, and the ublk_params the device derives from them.</summary>
public sealed class DeviceOptionsTests
{
    [Fact]
    public void Defaults_are_valid() => Assert.Null(new DeviceOptions().Validate());

    [Theory]
    [InlineData(0, 128, 512, 524288u, "--queues must be a number between 1 and 4096, got '0'")]
    [InlineData(4097, 128, 512, 524288u, "--queues must be a number between 1 and 4096, got '4097'")]
    [InlineData(1, 4097, 512, 524288u, "--depth must be a number between 1 and 4096, got '4097'")]
    [InlineData(1, 128, 1024, 524288u, "--block-size must be 512 or 4096")]
    [InlineData(1, 128, 512, 1000u, "--max-io must be a multiple of 4096 between 4096 and 32 MiB, got 1000")]
    [InlineData(1, 128, 512, 67108864u, "--max-io must be a multiple of 4096 between 4096 and 32 MiB, got 67108864")]
    public void Limits_come_from_the_kernel_constants_in_one_wording(int queues, int depth, uint block, uint maxIo, string message)
    {
        var o = new DeviceOptions { Queues = queues, Depth = depth, BlockSize = block, MaxIoBytes = maxIo };
        Assert.Equal(message, o.Validate());
        Assert.Equal((long)UblkConst.UBLK_MAX_NR_QUEUES, DeviceOptions.QueuesRange.Max);
        Assert.Equal(UblkConst.UBLK_MAX_QUEUE_DEPTH, DeviceOptions.DepthRange.Max);
    }

    [Fact]
    public void Backend_caps_are_checked_against_the_options()
    {
        var o = new DeviceOptions { BlockSize = 512 };
        Assert.Null(o.ValidateFor(new BackendCaps { Size = 1 << 20 }));
        Assert.Equal("the backend size 1000 is not a multiple of the block size 512", o.ValidateFor(new BackendCaps { Size = 1000 }));
        Assert.Equal("the backend needs --block-size 4096 or larger", o.ValidateFor(new BackendCaps { Size = 1 << 20, MinBlockSize = 4096 }));
        Assert.Equal("the backend size is 0", o.ValidateFor(new BackendCaps()));
    }

    [Fact]
    public void Params_follow_the_options_and_the_backend_caps()
    {
        var o = new DeviceOptions { BlockSize = 4096, ReadOnly = true };
        var caps = new BackendCaps { Size = 1UL << 30, Discard = true, VolatileCache = true, DiscardGranularity = 4096 };
        var info = new ublksrv_ctrl_dev_info { max_io_buf_bytes = 256 * 1024 };
        ublk_params p = UblkDevice.BuildParams(o, caps, info);
        Assert.Equal(UblkConst.UBLK_PARAM_TYPE_BASIC | UblkConst.UBLK_PARAM_TYPE_DISCARD, p.types);
        Assert.Equal(12, p.basic.logical_bs_shift);
        Assert.Equal((1UL << 30) >> 9, p.basic.dev_sectors);
        Assert.Equal(512u, p.basic.max_sectors);
        Assert.NotEqual(0u, p.basic.attrs & UblkConst.UBLK_ATTR_READ_ONLY);
        Assert.NotEqual(0u, p.basic.attrs & UblkConst.UBLK_ATTR_VOLATILE_CACHE);
        Assert.NotEqual(0u, p.basic.attrs & UblkConst.UBLK_ATTR_FUA);
        Assert.Equal(uint.MaxValue >> 9, p.discard.max_discard_sectors);
        Assert.Equal(0u, p.discard.max_write_zeroes_sectors);
        Assert.Equal(4096u, p.discard.discard_granularity);
    }
}

public sealed class ControlCommandNameTests
{
    /// <summary>Every control command the ABI knows is named in deadline messages by its own header name.</summary>
    [Fact]
    public void Every_control_command_has_its_header_name()
    {
        int n = 0;
        foreach (System.Reflection.FieldInfo f in typeof(global::Ublk.Aot.Abi.UblkConst).GetFields())
        {
            if (!f.IsLiteral || !f.Name.StartsWith("UBLK_U_CMD_", System.StringComparison.Ordinal)) continue;
            uint op = (uint)f.GetRawConstantValue()!;
            Assert.Equal(f.Name["UBLK_U_CMD_".Length..], global::Ublk.Aot.Ublk.UblkControl.CommandName(op));
            n++;
        }
        Assert.True(n >= 18, "found only " + n + " UBLK_U_CMD_ constants");
    }
}
