using System;
using System.IO;
using Xunit;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>Errors that need the kernel: id in use, not root, unreadable file, ublks_max reached. One line, exit 2, nothing left behind.</summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class EnvironmentErrorTests
{
    private static void AssertOneLineExit2(Result r, string message, string what)
    {
        Assert.True(r.Code == 2, what + ": expected exit 2\n" + r);
        string err = r.Err.Trim();
        Assert.False(err.Contains('\n'), what + ": expected one line on stderr, got:\n" + err);
        Assert.Contains(message, err);
    }

    [Fact]
    public void Id_in_use_is_refused()
    {
        using ServerProcess first = ServerProcess.Start("--backend mem:16M --id 7");
        Assert.Equal("/dev/ublkb7", first.DevicePath);
        Result second = UblkAot("serve --backend mem:16M --id 7");
        AssertOneLineExit2(second, "device id 7 is in use", "second serve --id 7");
        Assert.Equal(0, first.Stop());
        AssertNoDevices();
    }

    [Fact]
    public void Not_root_is_refused()
    {
        Result r = Sh("setpriv --reuid=65534 --regid=65534 --clear-groups " + Binary + " serve --backend mem:16M", check: false);
        AssertOneLineExit2(r, "permission denied opening /dev/ublk-control: run as root", "serve as nobody");
        AssertNoDevices();
    }

    [Fact]
    public void Unreadable_backing_file_is_refused()
    {
        string dir = TempDir("perm");
        string img = Path.Combine(dir, "secret.img");
        File.WriteAllBytes(img, new byte[1 << 20]);
        Sh("chmod 755 " + dir + " && chmod 000 " + img);
        Result r = Sh("setpriv --reuid=65534 --regid=65534 --clear-groups " + Binary + " serve --backend file:" + img, check: false);
        AssertOneLineExit2(r, "cannot open backing file " + img + ": EACCES (permission denied)", "serve on a 000 file as nobody");
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Ublks_max_reached_is_refused()
    {
        Require();
        AssertNoDevices();
        Sh("rmmod ublk_drv && modprobe ublk_drv ublks_max=1");
        try
        {
            using ServerProcess first = ServerProcess.Start("--backend mem:16M");
            Result second = UblkAot("serve --backend mem:16M");
            AssertOneLineExit2(second, "ublks_max reached", "serve past ublks_max=1");
            Assert.Equal(0, first.Stop());
            AssertNoDevices();
        }
        finally
        {
            Sh("rmmod ublk_drv; modprobe ublk_drv");
        }
    }
}
