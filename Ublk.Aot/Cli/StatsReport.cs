using System;
using System.Buffers;
using System.Globalization;
using System.IO;
using System.Text;
using System.Text.Json;
using Ublk.Aot.Abi;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Cli;

/// <summary>One reading of a live device's counters: what `ublk-aot stats` and /metrics show.</summary>
public sealed class StatsSnapshot
{
    public uint Device;
    /// <summary>The kernel's state of the device (GET_DEV_INFO: LIVE, QUIESCED, …; "gone" if it has none).</summary>
    public string State = "";
    public string IoMode = "";
    /// <summary>The device's recovery flags: off, reissue, fail-io (or "recovery", USER_RECOVERY alone).</summary>
    public string Recovery = "";
    public bool LatencyTiming;
    public int Pid;
    public QueueStats[] Queues = [];

    /// <summary>Reads device <paramref name="dev"/>'s queues (live, see <see cref="UblkQueue.Snapshot"/>) and its kernel state.</summary>
    public static StatsSnapshot Take(UblkControl ctrl, UblkDevice dev, IoMode mode)
    {
        var s = new StatsSnapshot
        {
            Device = dev.Id,
            IoMode = IoModes.Name(mode),
            Recovery = CommandLine.RecoveryOf(dev.Info),
            LatencyTiming = Ublk.LatencyTiming.Enabled,
            Pid = Environment.ProcessId,
            State = "gone",
        };
        if (ctrl.TryGetDevInfo(dev.Id, out ublksrv_ctrl_dev_info info) == 0) s.State = UblkConst.StateName(info.state);
        s.Queues = new QueueStats[dev.Queues.Length];
        for (int q = 0; q < s.Queues.Length; q++) s.Queues[q] = dev.Queues[q].Snapshot();
        return s;
    }

    /// <summary>The sum over the queues (latency buckets added, max of the maxima).</summary>
    public QueueStats Total()
    {
        QueueStats t = default;
        foreach (QueueStats q in Queues)
        {
            t.Reads += q.Reads; t.Writes += q.Writes; t.Flushes += q.Flushes; t.Discards += q.Discards;
            t.WriteZeroes += q.WriteZeroes; t.Other += q.Other; t.Errors += q.Errors;
            t.BytesRead += q.BytesRead; t.BytesWritten += q.BytesWritten; t.InFlight += q.InFlight;
            t.Latency.Add(q.Latency);
        }
        t.Cpu = -1;
        return t;
    }
}

/// <summary>
/// The renderings of a <see cref="StatsSnapshot"/>: the one-line JSON of the control socket's "stats" reply (and of
/// `ublk-aot stats --json`), the text table `ublk-aot stats` prints from it, and the Prometheus text exposition of
/// `serve --metrics`. Field and metric names are documented in the README and are stable.
/// </summary>
public static class StatsReport
{
    /// <summary>The percentiles shown, with their JSON names.</summary>
    private static readonly (string Name, double Q)[] Percentiles = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99_9", 0.999)];

    private static readonly string[] OpNames = ["read", "write", "flush", "discard", "write_zeroes", "other"];

    private static long Op(in QueueStats s, int op) => op switch
    {
        0 => s.Reads, 1 => s.Writes, 2 => s.Flushes, 3 => s.Discards, 4 => s.WriteZeroes, _ => s.Other,
    };

    // ---------------------------------------------------------------- JSON

    /// <summary>
    /// One line of JSON:
    /// {"device","state","io_mode","recovery","latency_timing","pid","latency_bounds_us":[1,2,4,…],"total":{…},"queues":[{"queue","cpu",…}]}
    /// where each queue (and the total) has reads, writes, flushes, discards, write_zeroes, other, errors,
    /// bytes_read, bytes_written, in_flight, latency_us {count, sum, p50, p90, p99, p99_9, max} and latency_buckets
    /// (per-bucket counts, not cumulative; the last is the overflow above the last bound).
    /// </summary>
    public static string Json(StatsSnapshot s)
    {
        var buf = new ArrayBufferWriter<byte>(4096);
        using (var w = new Utf8JsonWriter(buf, new JsonWriterOptions { Indented = false }))
        {
            w.WriteStartObject();
            w.WriteNumber("device", s.Device);
            w.WriteString("state", s.State);
            w.WriteString("io_mode", s.IoMode);
            w.WriteString("recovery", s.Recovery);
            w.WriteBoolean("latency_timing", s.LatencyTiming);
            w.WriteNumber("pid", s.Pid);
            w.WriteStartArray("latency_bounds_us");
            for (int i = 0; i < LatencyHistogram.FiniteBuckets; i++) w.WriteNumberValue(LatencyHistogram.UpperBoundUs(i));
            w.WriteEndArray();
            w.WritePropertyName("total");
            WriteQueue(w, s.Total(), -1);
            w.WriteStartArray("queues");
            for (int q = 0; q < s.Queues.Length; q++) WriteQueue(w, s.Queues[q], q);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buf.WrittenSpan);
    }

    private static void WriteQueue(Utf8JsonWriter w, in QueueStats s, int queue)
    {
        w.WriteStartObject();
        if (queue >= 0)
        {
            w.WriteNumber("queue", queue);
            w.WriteNumber("cpu", s.Cpu);
        }
        w.WriteNumber("reads", s.Reads);
        w.WriteNumber("writes", s.Writes);
        w.WriteNumber("flushes", s.Flushes);
        w.WriteNumber("discards", s.Discards);
        w.WriteNumber("write_zeroes", s.WriteZeroes);
        w.WriteNumber("other", s.Other);
        w.WriteNumber("errors", s.Errors);
        w.WriteNumber("bytes_read", s.BytesRead);
        w.WriteNumber("bytes_written", s.BytesWritten);
        w.WriteNumber("in_flight", Math.Max(0, s.InFlight));
        w.WriteStartObject("latency_us");
        w.WriteNumber("count", s.Latency.Count);
        w.WriteNumber("sum", Us(s.Latency.SumNs));
        foreach ((string name, double q) in Percentiles) w.WriteNumber(name, Us(s.Latency.PercentileNs(q)));
        w.WriteNumber("max", Us(s.Latency.MaxNs));
        w.WriteEndObject();
        w.WriteStartArray("latency_buckets");
        for (int i = 0; i < LatencyHistogram.BucketCount; i++) w.WriteNumberValue(s.Latency.Buckets[i]);
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>Nanoseconds as microseconds, to the nanosecond.</summary>
    private static double Us(double ns) => Math.Round(ns / 1000.0, 3);

    // ---------------------------------------------------------------- text

    /// <summary>The table `ublk-aot stats ID` prints, from the server's JSON.</summary>
    public static void PrintTable(JsonElement root, TextWriter o)
    {
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"ublk device {root.GetProperty("device").GetUInt32()} (/dev/ublkb{root.GetProperty("device").GetUInt32()}): state {root.GetProperty("state").GetString()}, io mode {root.GetProperty("io_mode").GetString()}, recovery {root.GetProperty("recovery").GetString()}, server pid {root.GetProperty("pid").GetInt32()}"));
        bool timed = root.GetProperty("latency_timing").GetBoolean();
        o.WriteLine("QUEUE CPU       READS      WRITES  FLUSHES DISCARDS  WZEROES ERRORS      READ   WRITTEN INFLIGHT      P50      P90      P99    P99.9      MAX");
        foreach (JsonElement q in root.GetProperty("queues").EnumerateArray())
            Row(o, q.GetProperty("queue").GetInt32().ToString(CultureInfo.InvariantCulture), q.GetProperty("cpu").GetInt32().ToString(CultureInfo.InvariantCulture), q, timed);
        Row(o, "all", "-", root.GetProperty("total"), timed);
        if (!timed) o.WriteLine("(latency timing is off: UBLK_AOT_NO_LATENCY=1 in the server's environment)");
    }

    private static void Row(TextWriter o, string queue, string cpu, JsonElement q, bool timed)
    {
        long L(string name) => q.GetProperty(name).GetInt64();
        JsonElement lat = q.GetProperty("latency_us");
        string T(string name) => timed ? Duration(lat.GetProperty(name).GetDouble()) : "-";
        o.WriteLine(string.Format(CultureInfo.InvariantCulture,
            "{0,-5} {1,3} {2,11} {3,11} {4,8} {5,8} {6,8} {7,6} {8,9} {9,9} {10,8} {11,8} {12,8} {13,8} {14,8} {15,8}",
            queue, cpu, L("reads"), L("writes"), L("flushes"), L("discards"), L("write_zeroes"), L("errors"),
            Sizes.Format((ulong)L("bytes_read")), Sizes.Format((ulong)L("bytes_written")), L("in_flight"),
            T("p50"), T("p90"), T("p99"), T("p99_9"), T("max")));
    }

    /// <summary>Microseconds for a person: "850us", "12.5ms", "3.20s".</summary>
    public static string Duration(double us)
    {
        if (us < 1000) return us.ToString(us < 10 ? "0.#" : "0", CultureInfo.InvariantCulture) + "us";
        if (us < 1_000_000) return (us / 1000).ToString(us < 10_000 ? "0.##" : "0.#", CultureInfo.InvariantCulture) + "ms";
        return (us / 1_000_000).ToString("0.##", CultureInfo.InvariantCulture) + "s";
    }

    // ---------------------------------------------------------------- Prometheus

    /// <summary>The Content-Type of <see cref="Prometheus"/>'s body.</summary>
    public const string PrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

    /// <summary>
    /// The Prometheus text exposition format, version 0.0.4 ("Exposition formats", Text format details,
    /// https://prometheus.io/docs/instrumenting/exposition_formats/). The rules that matter here: lines end in "\n",
    /// the last one too; all samples of one metric name form one uninterrupted group, its HELP and TYPE lines first
    /// and at most one of each; a histogram named x has x_bucket samples with a cumulative count per upper bound
    /// (label le, ascending, the last le="+Inf" equal to x_count), then x_sum and x_count; label values escape
    /// backslash, double quote and line feed (ours never contain them). Counters end in _total, units are base
    /// units (seconds, bytes), as the naming guide and `promtool check metrics` want.
    /// </summary>
    public static string Prometheus(StatsSnapshot s)
    {
        var b = new StringBuilder(16 * 1024);
        string dev = s.Device.ToString(CultureInfo.InvariantCulture);

        Family(b, "ublk_aot_device_info", "gauge",
            "Always 1; the labels describe the device: its io mode, its recovery flags, the kernel's state of it, and whether latency is timed.");
        b.Append("ublk_aot_device_info{device=\"").Append(dev).Append("\",io_mode=\"").Append(Escape(s.IoMode))
            .Append("\",recovery=\"").Append(Escape(s.Recovery)).Append("\",state=\"").Append(Escape(s.State))
            .Append("\",latency_timing=\"").Append(s.LatencyTiming ? "on" : "off").Append("\"} 1\n");

        Family(b, "ublk_aot_requests_total", "counter", "Requests the server received from the kernel, by queue and operation.");
        for (int q = 0; q < s.Queues.Length; q++)
            for (int op = 0; op < OpNames.Length; op++)
                Sample(b, "ublk_aot_requests_total", dev, q, "op", OpNames[op], Op(s.Queues[q], op));

        Family(b, "ublk_aot_errors_total", "counter", "Requests completed with an error (and commands the kernel refused), by queue.");
        for (int q = 0; q < s.Queues.Length; q++) Sample(b, "ublk_aot_errors_total", dev, q, null, null, s.Queues[q].Errors);

        Family(b, "ublk_aot_read_bytes_total", "counter", "Bytes read from the backend and returned to the kernel, by queue.");
        for (int q = 0; q < s.Queues.Length; q++) Sample(b, "ublk_aot_read_bytes_total", dev, q, null, null, s.Queues[q].BytesRead);

        Family(b, "ublk_aot_written_bytes_total", "counter", "Bytes written to the backend, by queue.");
        for (int q = 0; q < s.Queues.Length; q++) Sample(b, "ublk_aot_written_bytes_total", dev, q, null, null, s.Queues[q].BytesWritten);

        Family(b, "ublk_aot_in_flight_requests", "gauge", "Requests received and not yet committed, by queue.");
        for (int q = 0; q < s.Queues.Length; q++) Sample(b, "ublk_aot_in_flight_requests", dev, q, null, null, Math.Max(0, s.Queues[q].InFlight));

        const string h = "ublk_aot_request_duration_seconds";
        Family(b, h, "histogram", "Time from a request's arrival at the server to its commit, by queue (empty when latency timing is off).");
        for (int q = 0; q < s.Queues.Length; q++)
        {
            ref readonly LatencyHistogram lat = ref s.Queues[q].Latency;
            string qs = q.ToString(CultureInfo.InvariantCulture);
            long cumulative = 0;
            for (int i = 0; i < LatencyHistogram.BucketCount; i++)
            {
                cumulative += lat.Buckets[i];
                string le = i < LatencyHistogram.FiniteBuckets ? Seconds(LatencyHistogram.UpperBoundUs(i)) : "+Inf";
                b.Append(h).Append("_bucket{device=\"").Append(dev).Append("\",queue=\"").Append(qs).Append("\",le=\"").Append(le).Append("\"} ")
                    .Append(cumulative.ToString(CultureInfo.InvariantCulture)).Append('\n');
            }
            // _count is the +Inf bucket by construction, even in a snapshot torn against the queue's writes.
            b.Append(h).Append("_sum{device=\"").Append(dev).Append("\",queue=\"").Append(qs).Append("\"} ")
                .Append((lat.SumNs / 1e9).ToString("R", CultureInfo.InvariantCulture)).Append('\n');
            b.Append(h).Append("_count{device=\"").Append(dev).Append("\",queue=\"").Append(qs).Append("\"} ")
                .Append(cumulative.ToString(CultureInfo.InvariantCulture)).Append('\n');
        }
        return b.ToString();
    }

    private static void Family(StringBuilder b, string name, string type, string help)
        => b.Append("# HELP ").Append(name).Append(' ').Append(help.Replace("\\", "\\\\").Replace("\n", "\\n")).Append('\n')
            .Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');

    private static void Sample(StringBuilder b, string name, string dev, int queue, string? label, string? value, long v)
    {
        b.Append(name).Append("{device=\"").Append(dev).Append("\",queue=\"").Append(queue.ToString(CultureInfo.InvariantCulture)).Append('"');
        if (label != null) b.Append(',').Append(label).Append("=\"").Append(Escape(value!)).Append('"');
        b.Append("} ").Append(v.ToString(CultureInfo.InvariantCulture)).Append('\n');
    }

    /// <summary>A label value: backslash, double quote and line feed escaped (exposition format).</summary>
    public static string Escape(string v) => v.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");

    /// <summary>Whole microseconds as exact decimal seconds: 1 → "0.000001", 134217728 → "134.217728".</summary>
    public static string Seconds(long us)
    {
        string frac = (us % 1_000_000).ToString("D6", CultureInfo.InvariantCulture).TrimEnd('0');
        string whole = (us / 1_000_000).ToString(CultureInfo.InvariantCulture);
        return frac.Length == 0 ? whole : whole + "." + frac;
    }
}
