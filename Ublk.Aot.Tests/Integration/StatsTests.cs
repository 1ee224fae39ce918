using System;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Ublk.Aot.Tests.Cli;
using Xunit;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// Live stats from another process (`ublk-aot stats ID [--json]`, over the control socket) and `serve --metrics`
/// (Prometheus text over HTTP on a TCP port and on a unix socket), checked with curl and the real promtool, while
/// the queue threads still allocate nothing.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class StatsTests
{
    private static int FreePort()
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)s.LocalEndPoint!).Port;
    }

    private static JsonElement StatsJson(int id, out JsonDocument doc)
    {
        Result r = UblkAot("stats " + id + " --json");
        Assert.True(r.Code == 0, "stats --json: " + r);
        string line = r.Out.Trim();
        Assert.DoesNotContain("\n", line);
        doc = JsonDocument.Parse(line);
        return doc.RootElement;
    }

    /// <summary>Stats once nothing is in flight (up to 10 s; udev's probe may still be reading): the last reading either way.</summary>
    private static JsonElement IdleStats(int id, out JsonDocument doc)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            JsonElement r = StatsJson(id, out doc);
            if (Total(r, "in_flight") == 0 || sw.ElapsedMilliseconds > 10_000) return r;
            doc.Dispose();
            System.Threading.Thread.Sleep(200);
        }
    }

    private static long Total(JsonElement root, string field) => root.GetProperty("total").GetProperty(field).GetInt64();

    /// <summary>GET /metrics with curl (TCP URL, or a unix socket path); asserts 200, the exposition's content type, promtool clean.</summary>
    private static string Scrape(string curlTarget, string dir, string name)
    {
        string headers = Path.Combine(dir, name + ".headers"), body = Path.Combine(dir, name + ".prom");
        Result r = Sh("curl -sS --max-time 30 -D " + headers + " -o " + body + " -w '%{http_code}' " + curlTarget, check: false);
        Assert.True(r.Code == 0 && r.Out.Trim() == "200", "curl " + curlTarget + ": " + r);
        string head = File.ReadAllText(headers);
        Assert.Contains("Content-Type: text/plain; version=0.0.4", head);
        string text = File.ReadAllText(body);
        Promtool.AssertClean(text);
        return text;
    }

    [Fact]
    public void Stats_and_metrics_from_outside_while_the_server_runs_with_nothing_allocated_on_the_queues()
    {
        AssertNoDevices();
        string dir = TempDir("stats");
        string sock = Path.Combine(dir, "metrics.sock");
        int port = FreePort();

        using ServerProcess a = ServerProcess.Start("--backend mem:64M --queues 2 --io-mode copy --stats --metrics 127.0.0.1:" + port);
        using ServerProcess b = ServerProcess.Start("--backend null:256M --stats --metrics unix:" + sock);
        try
        {
            // Before: whatever udev's probe read. After: reads, writes and their bytes grew by at least what dd did.
            JsonElement before = StatsJson(a.Id, out JsonDocument d0);
            using (d0)
            {
                Assert.Equal("copy", before.GetProperty("io_mode").GetString());
                Assert.Equal(2, before.GetProperty("queues").GetArrayLength());
                long r0 = Total(before, "reads"), br0 = Total(before, "bytes_read"), w0 = Total(before, "writes"), bw0 = Total(before, "bytes_written");
                Sh("dd if=" + a.DevicePath + " of=/dev/null bs=64k count=256 iflag=direct status=none");
                Sh("dd if=/dev/zero of=" + a.DevicePath + " bs=64k count=64 oflag=direct conv=fsync status=none");
                // The close of dd's writable fd makes udev probe the disk (reads): let it finish, then wait for idle.
                Sh("udevadm settle -t 30", check: false);
                JsonElement after = IdleStats(a.Id, out JsonDocument d1);
                using (d1)
                {
                    Assert.True(Total(after, "reads") >= r0 + 256, "reads did not grow by 256: " + after);
                    Assert.True(Total(after, "bytes_read") >= br0 + 256 * 65536, "bytes_read: " + after);
                    Assert.True(Total(after, "writes") >= w0 + 64, "writes: " + after);
                    Assert.True(Total(after, "bytes_written") >= bw0 + 64 * 65536, "bytes_written: " + after);
                    Assert.Equal(0, Total(after, "errors"));
                    Assert.Equal(0, Total(after, "in_flight"));
                    foreach (JsonElement q in after.GetProperty("queues").EnumerateArray())
                        Assert.Equal(0, q.GetProperty("in_flight").GetInt64());
                    Assert.Equal("LIVE", after.GetProperty("state").GetString());
                    Assert.Equal("off", after.GetProperty("recovery").GetString());
                    Assert.Equal(a.Pid, after.GetProperty("pid").GetInt32());
                    Assert.True(after.GetProperty("latency_timing").GetBoolean());
                    JsonElement lat = after.GetProperty("total").GetProperty("latency_us");
                    long count = lat.GetProperty("count").GetInt64();
                    Assert.True(count >= 256 + 64, "latency count " + count + ": " + after);
                    double p50 = lat.GetProperty("p50").GetDouble(), p99 = lat.GetProperty("p99").GetDouble(),
                        p999 = lat.GetProperty("p99_9").GetDouble(), max = lat.GetProperty("max").GetDouble();
                    Assert.True(p50 > 0 && p50 <= p99 && p99 <= p999 && p999 <= max, "percentiles out of order: " + lat);
                    long inBuckets = 0;
                    foreach (JsonElement n in after.GetProperty("total").GetProperty("latency_buckets").EnumerateArray()) inBuckets += n.GetInt64();
                    Assert.Equal(count, inBuckets);
                }
            }

            Result table = UblkAot("stats " + a.Id);
            Assert.True(table.Code == 0, "stats: " + table);
            Assert.Contains("ublk device " + a.Id + " (/dev/ublkb" + a.Id + "): state LIVE, io mode copy, recovery off", table.Out);
            Assert.Contains("QUEUE", table.Out);
            Assert.Contains("\nall ", table.Out);

            // Prometheus over TCP: the same counters, promtool clean; other paths 404.
            string tcp = Scrape("http://127.0.0.1:" + port + "/metrics", dir, "tcp");
            Assert.Contains("ublk_aot_requests_total{device=\"" + a.Id + "\",queue=\"0\",op=\"read\"}", tcp);
            Assert.Contains("ublk_aot_device_info{device=\"" + a.Id + "\",io_mode=\"copy\",recovery=\"off\",state=\"LIVE\",latency_timing=\"on\"} 1", tcp);
            Assert.Contains("ublk_aot_request_duration_seconds_bucket{device=\"" + a.Id + "\",queue=\"1\",le=\"+Inf\"}", tcp);
            Result notFound = Sh("curl -sS --max-time 30 -o /dev/null -w '%{http_code}' http://127.0.0.1:" + port + "/nope", check: false);
            Assert.Equal("404", notFound.Out.Trim());

            // A second server on the same port: one line, exit 2, and no device left behind.
            int devicesBefore = KernelDevices().Length;
            Result clash = UblkAot("serve --backend mem:16M --metrics 127.0.0.1:" + port);
            Assert.True(clash.Code == 2, "serve on a port in use: " + clash);
            Assert.Equal("ublk-aot: serve: --metrics 127.0.0.1:" + port + ": address already in use", clash.Err.Trim());
            Assert.Equal(devicesBefore, KernelDevices().Length);

            // The unix socket: the same HTTP; device b in auto mode names the mode auto picked.
            Sh("dd if=" + b.DevicePath + " of=/dev/null bs=4k count=100 iflag=direct status=none");
            JsonElement bj = StatsJson(b.Id, out JsonDocument d2);
            string bMode;
            using (d2)
            {
                bMode = bj.GetProperty("io_mode").GetString()!;
                Assert.True(bMode is "copy" or "user-copy" or "zero-copy" or "auto-buf-reg", "io mode '" + bMode + "'");
                Assert.True(Total(bj, "reads") >= 100, bj.ToString());
            }
            string unix = Scrape("--unix-socket " + sock + " http://localhost/metrics", dir, "unix");
            Assert.Contains("ublk_aot_device_info{device=\"" + b.Id + "\",io_mode=\"" + bMode + "\"", unix);
            Assert.Contains("ublk_aot_requests_total{device=\"" + b.Id + "\",queue=\"0\",op=\"read\"}", unix);

            Assert.Equal(0, a.Stop());
            Assert.Equal(0, b.Stop());
            Assert.True(a.StatSum("alloc_bytes") == 0 && a.StatSum("gc0") == 0, "queue threads allocated:\n" + a.Stderr);
            Assert.True(b.StatSum("alloc_bytes") == 0 && b.StatSum("gc0") == 0, "queue threads allocated:\n" + b.Stderr);
            Assert.False(File.Exists(sock), "the metrics socket outlived its server");
        }
        finally
        {
            a.Dispose();
            b.Dispose();
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }
}
