using System.Text.Json;
using Xunit;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>`ublk-aot features` against the running kernel: the first vertical slice.</summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class FeaturesTests
{
    [Fact]
    public void Features_lists_the_kernels_flags_by_name()
    {
        Require();
        Result r = UblkAot("features");
        Assert.True(r.Code == 0, "features failed: " + r);
        Assert.Matches(@"^ublk features: 0x[0-9a-f]+", r.Out);
        // Every kernel with ublk_drv that we support (6.1+) encodes commands as ioctls.
        Assert.Contains("UBLK_F_CMD_IOCTL_ENCODE", r.Out);

        Result j = UblkAot("features --json");
        Assert.True(j.Code == 0, "features --json failed: " + j);
        using JsonDocument doc = JsonDocument.Parse(j.Out);
        ulong value = doc.RootElement.GetProperty("value").GetUInt64();
        Assert.Equal("0x" + value.ToString("x"), doc.RootElement.GetProperty("features").GetString());
        int bits = System.Numerics.BitOperations.PopCount(value);
        Assert.Equal(bits, doc.RootElement.GetProperty("names").GetArrayLength());
        Assert.Contains(doc.RootElement.GetProperty("names").EnumerateArray(), e => e.GetString() == "CMD_IOCTL_ENCODE");
    }

    [Fact]
    public void Features_without_the_module_says_how_to_load_it()
    {
        Require();
        AssertNoDevices();
        Sh("rmmod ublk_drv");
        try
        {
            Result r = UblkAot("features");
            Assert.Equal(1, r.Code);
            Assert.Equal("ublk-aot: /dev/ublk-control not found: load ublk_drv (modprobe ublk_drv)", r.Err.Trim());

            Result s = UblkAot("serve --backend mem:16M");
            Assert.Equal(2, s.Code);
            Assert.Contains("/dev/ublk-control not found: load ublk_drv (modprobe ublk_drv)", s.Err);
        }
        finally
        {
            Sh("modprobe ublk_drv");
        }
    }

    [Fact]
    public void Features_without_permission_says_so()
    {
        Require();
        Result r = Sh("setpriv --reuid=65534 --regid=65534 --clear-groups " + Binary + " features; echo rc=$?", check: false);
        Assert.Contains("permission denied opening /dev/ublk-control", r.Out + r.Err);
        Assert.Contains("rc=1", r.Out);
    }
}
