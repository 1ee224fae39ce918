using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Text.Json;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Cli;

/// <summary>
/// What a recovery needs to rebuild a device's server: its backend SPEC and serve options, one JSON file per
/// recoverable device under /run/ublk-aot/ (UBLK_AOT_STATE_DIR overrides). Written atomically (a temporary file in
/// the same directory, flushed, then renamed over) before the device goes live, removed when it is deleted.
/// The kernel keeps the rest (queues, depth, size, params): a recovery reads those from the device itself.
/// </summary>
public static class StateFile
{
    public const int FormatVersion = 1;

    public static string Directory => Environment.GetEnvironmentVariable("UBLK_AOT_STATE_DIR") is { Length: > 0 } d ? d : "/run/ublk-aot";

    public static string PathOf(uint id) => System.IO.Path.Combine(Directory, id.ToString(CultureInfo.InvariantCulture) + ".json");

    /// <summary>The saved state of device <paramref name="id"/>.</summary>
    public sealed class State
    {
        public required string Backend;
        public required DeviceOptions Device;
    }

    public static void Write(uint id, string backend, DeviceOptions o)
    {
        var json = new MemoryStream();
        using (var w = new Utf8JsonWriter(json, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("version", FormatVersion);
            w.WriteNumber("id", id);
            w.WriteString("backend", backend);
            w.WriteString("recovery", DeviceOptions.RecoveryName(o.Recovery));
            w.WriteNumber("queues", o.Queues);
            w.WriteNumber("depth", o.Depth);
            w.WriteNumber("block_size", o.BlockSize);
            w.WriteNumber("max_io", o.MaxIoBytes);
            w.WriteBoolean("read_only", o.ReadOnly);
            w.WriteNumber("idle_release", (long)o.IdleRelease.TotalSeconds);
            w.WriteBoolean("fixed_buffers", o.FixedBuffers);
            w.WriteBoolean("huge_buffers", o.HugeBuffers);
            w.WriteBoolean("no_partition_scan", o.NoPartitionScan);
            w.WriteNumber("poll_us", o.PollMicros);
            if (o.Cpus is { } cpus)
            {
                w.WriteStartArray("cpus");
                foreach (int c in cpus) w.WriteNumberValue(c);
                w.WriteEndArray();
            }
            w.WriteEndObject();
        }
        AtomicFile.Write(PathOf(id), json.GetBuffer().AsSpan(0, (int)json.Length));
    }

    /// <summary>The state of device <paramref name="id"/>, or null if it has no file. Throws UsageException when unreadable.</summary>
    public static State? Read(uint id)
    {
        string path = PathOf(id);
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (FileNotFoundException) { return null; }
        catch (DirectoryNotFoundException) { return null; }
        try
        {
            using var doc = JsonDocument.Parse(bytes);
            JsonElement r = doc.RootElement;
            int version = r.GetProperty("version").GetInt32();
            if (version != FormatVersion) throw new UsageException("state file " + path + " has format version " + version + ", this ublk-aot reads " + FormatVersion);
            var o = new DeviceOptions
            {
                Id = (int)id,
                Recovery = ParseRecovery(r.GetProperty("recovery").GetString()) ?? throw new FormatException("recovery"),
                Queues = r.GetProperty("queues").GetInt32(),
                Depth = r.GetProperty("depth").GetInt32(),
                BlockSize = r.GetProperty("block_size").GetUInt32(),
                MaxIoBytes = r.GetProperty("max_io").GetUInt32(),
                ReadOnly = r.GetProperty("read_only").GetBoolean(),
                IdleRelease = TimeSpan.FromSeconds(r.GetProperty("idle_release").GetInt64()),
                FixedBuffers = r.GetProperty("fixed_buffers").GetBoolean(),
                HugeBuffers = r.GetProperty("huge_buffers").GetBoolean(),
            };
            // Absent in files written before the option existed.
            if (r.TryGetProperty("no_partition_scan", out JsonElement nps)) o.NoPartitionScan = nps.GetBoolean();
            if (r.TryGetProperty("poll_us", out JsonElement poll)) o.PollMicros = poll.GetInt32();
            if (r.TryGetProperty("cpus", out JsonElement cpus))
            {
                var list = new List<int>();
                foreach (JsonElement c in cpus.EnumerateArray()) list.Add(c.GetInt32());
                o.Cpus = list.ToArray();
            }
            return new State { Backend = r.GetProperty("backend").GetString() ?? throw new FormatException("backend"), Device = o };
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or FormatException or InvalidOperationException)
        {
            throw new UsageException("state file " + path + " is unreadable (" + e.Message + "): give --backend SPEC, or remove the file");
        }
    }

    /// <summary>Removes the state file (and the name file) of device <paramref name="id"/>, if any.</summary>
    public static void Delete(uint id)
    {
        try { File.Delete(PathOf(id)); }
        catch (DirectoryNotFoundException) { }
        DeleteName(id);
    }

    /// <summary>
    /// ID.name: the config name of a device started by `serve --config DIR/NAME.conf`, one line, written atomically
    /// before START_DEV (so that udev, which asks `ublk-aot udev-name ublkbID` when the disk appears, finds it) and
    /// removed with the device. Any device, recoverable or not, served from a config has one.
    /// </summary>
    public static string NamePathOf(uint id) => System.IO.Path.Combine(Directory, id.ToString(CultureInfo.InvariantCulture) + ".name");

    public static void WriteName(uint id, string name) => AtomicFile.Write(NamePathOf(id), System.Text.Encoding.UTF8.GetBytes(name + "\n"));

    /// <summary>The config name of device <paramref name="id"/>, or null (no file, unreadable, or not a valid name).</summary>
    public static string? ReadName(uint id)
    {
        try
        {
            string name = File.ReadAllText(NamePathOf(id)).Trim();
            return ServeConfig.ValidName(name) ? name : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    public static void DeleteName(uint id)
    {
        try { File.Delete(NamePathOf(id)); }
        catch (DirectoryNotFoundException) { }
    }

    public static bool Exists(uint id) => File.Exists(PathOf(id));

    /// <summary>"reissue", "fail-io", "off" → the mode; anything else → null.</summary>
    public static RecoveryMode? ParseRecovery(string? word) => word switch
    {
        "off" => RecoveryMode.Off,
        "reissue" => RecoveryMode.Reissue,
        "fail-io" => RecoveryMode.FailIo,
        _ => null,
    };
}
