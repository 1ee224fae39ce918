using System;
using System.IO;
using Ublk.Aot.Cli;
using Ublk.Aot.Ublk;
using Xunit;

namespace Ublk.Aot.Tests.Cli;

/// <summary>Tests that point UBLK_AOT_STATE_DIR (process-wide) at a folder of their own: one at a time.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class StateDirCollection
{
    public const string Name = "state-dir";
}

/// <summary>The recovery state file: written atomically, read back whole, refused clearly when damaged.</summary>
[Collection(StateDirCollection.Name)]
public sealed class StateFileTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "ublk-state-" + Guid.NewGuid().ToString("N"));

    public StateFileTests() => Environment.SetEnvironmentVariable("UBLK_AOT_STATE_DIR", _dir);

    public void Dispose()
    {
        Environment.SetEnvironmentVariable("UBLK_AOT_STATE_DIR", null);
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    [Fact]
    public void Options_round_trip_and_no_temporary_file_is_left()
    {
        var o = new DeviceOptions
        {
            Queues = 3, Depth = 64, BlockSize = 4096, MaxIoBytes = 256 * 1024, ReadOnly = true, Recovery = RecoveryMode.Reissue,
            IdleRelease = TimeSpan.FromSeconds(7), FixedBuffers = true, HugeBuffers = true, Cpus = [1, 0], NoPartitionScan = true, PollMicros = 150,
        };
        StateFile.Write(12, "file:/data/x.img,size=1G", o);
        StateFile.Write(12, "file:/data/x.img,size=1G", o); // over an existing file
        Assert.Equal([Path.Combine(_dir, "12.json")], Directory.GetFiles(_dir));
        StateFile.State? st = StateFile.Read(12);
        Assert.NotNull(st);
        Assert.Equal("file:/data/x.img,size=1G", st.Backend);
        DeviceOptions r = st.Device;
        Assert.Equal((12, 3, 64, 4096u, 256u * 1024, true, RecoveryMode.Reissue), (r.Id, r.Queues, r.Depth, r.BlockSize, r.MaxIoBytes, r.ReadOnly, r.Recovery));
        Assert.Equal((TimeSpan.FromSeconds(7), true, true), (r.IdleRelease, r.FixedBuffers, r.HugeBuffers));
        Assert.Equal([1, 0], r.Cpus!);
        Assert.True(r.NoPartitionScan);
        Assert.Equal(150, r.PollMicros);
        StateFile.Delete(12);
        Assert.Null(StateFile.Read(12));
        StateFile.Delete(12); // twice is fine
    }

    [Fact]
    public void A_file_without_no_partition_scan_reads_as_false()
    {
        StateFile.Write(5, "null:1G", new DeviceOptions { Recovery = RecoveryMode.Reissue, Cpus = [0] }); // cpus after it: the line ends with a comma
        string path = Path.Combine(_dir, "5.json");
        string text = File.ReadAllText(path);
        Assert.Contains("\"no_partition_scan\": false", text);
        File.WriteAllText(path, text.Replace("\"no_partition_scan\": false,", ""));
        Assert.DoesNotContain("no_partition_scan", File.ReadAllText(path));
        Assert.False(StateFile.Read(5)!.Device.NoPartitionScan);
    }

    [Fact]
    public void A_damaged_file_is_a_usage_error_naming_it()
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, "3.json"), "{\"version\": 1, \"backend\": ");
        var e = Assert.Throws<UsageException>(() => StateFile.Read(3));
        Assert.Contains(Path.Combine(_dir, "3.json") + " is unreadable", e.Message);
        File.WriteAllText(Path.Combine(_dir, "4.json"), "{\"version\": 9}");
        Assert.Contains("format version 9", Assert.Throws<UsageException>(() => StateFile.Read(4)).Message);
    }
}
