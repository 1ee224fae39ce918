using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ublk.Aot.Cli;
using Ublk.Aot.Ublk;
using Xunit;

namespace Ublk.Aot.Tests.Cli;

/// <summary>The real promtool: `promtool check metrics` reads an exposition on stdin (exit 0 and no output when clean).</summary>
public static class Promtool
{
    public static string Path
    {
        get
        {
            foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
            {
                string p = System.IO.Path.Combine(dir, "promtool");
                if (File.Exists(p)) return p;
            }
            Assert.Fail("promtool is missing (Debian package 'prometheus'; scripts/vm-setup.sh installs it): the metrics test needs the real validator");
            return "";
        }
    }

    /// <summary>Fails the test unless promtool accepts <paramref name="exposition"/> without a single lint problem.</summary>
    public static void AssertClean(string exposition)
    {
        Integration.IntegrationEnv.Result r = Integration.IntegrationEnv.Run(Path, "check metrics", 60_000, stdin: exposition);
        Assert.True(r.Code == 0 && r.Out.Trim().Length == 0 && r.Err.Trim().Length == 0,
            "promtool check metrics refused the exposition: " + r + "\n--- exposition ---\n" + exposition);
    }
}

/// <summary>The renderings of live stats (JSON, table, Prometheus text) and the HTTP endpoint of serve --metrics.</summary>
public sealed class StatsReportTests
{
    private static StatsSnapshot Sample(bool empty = false)
    {
        var q0 = new QueueStats { Reads = 120, Writes = 40, Flushes = 3, Discards = 1, WriteZeroes = 2, Errors = 1, BytesRead = 120 * 4096, BytesWritten = 40 * 65536, InFlight = 2, Cpu = 0 };
        var q1 = new QueueStats { Reads = 7, Cpu = 1, BytesRead = 7 * 4096 };
        if (!empty)
        {
            for (int i = 0; i < 100; i++) q0.Latency.Record(15_000 + i * 100);
            for (int i = 0; i < 60; i++) q0.Latency.Record(3_000_000);
            q0.Latency.Record(300_000_000_000L); // one in the overflow bucket
            for (int i = 0; i < 7; i++) q1.Latency.Record(800);
        }
        return new StatsSnapshot { Device = 3, State = "LIVE", IoMode = "copy", Recovery = "reissue", LatencyTiming = !empty, Pid = 4242, Queues = [q0, q1] };
    }

    [Fact]
    public void Prometheus_text_passes_promtool_and_its_histogram_is_cumulative()
    {
        string text = StatsReport.Prometheus(Sample());
        Promtool.AssertClean(text);
        Promtool.AssertClean(StatsReport.Prometheus(Sample(empty: true)));
        Assert.EndsWith("\n", text);
        Assert.Contains("ublk_aot_requests_total{device=\"3\",queue=\"0\",op=\"read\"} 120\n", text);
        Assert.Contains("ublk_aot_requests_total{device=\"3\",queue=\"1\",op=\"write_zeroes\"} 0\n", text);
        Assert.Contains("ublk_aot_read_bytes_total{device=\"3\",queue=\"0\"} 491520\n", text);
        Assert.Contains("ublk_aot_in_flight_requests{device=\"3\",queue=\"0\"} 2\n", text);
        Assert.Contains("ublk_aot_device_info{device=\"3\",io_mode=\"copy\",recovery=\"reissue\",state=\"LIVE\",latency_timing=\"on\"} 1\n", text);

        // Queue 0's buckets: ascending le, non-decreasing counts, the +Inf bucket equal to _count, one group per name.
        var les = new List<(double Le, long N)>();
        long count = -1;
        foreach (string line in text.Split('\n'))
        {
            const string p = "ublk_aot_request_duration_seconds_bucket{device=\"3\",queue=\"0\",le=\"";
            if (line.StartsWith(p, StringComparison.Ordinal))
            {
                string le = line[p.Length..line.IndexOf('"', p.Length)];
                les.Add((le == "+Inf" ? double.PositiveInfinity : double.Parse(le, CultureInfo.InvariantCulture), long.Parse(line[(line.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture)));
            }
            if (line.StartsWith("ublk_aot_request_duration_seconds_count{device=\"3\",queue=\"0\"}", StringComparison.Ordinal))
                count = long.Parse(line[(line.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture);
        }
        Assert.Equal(LatencyHistogram.BucketCount, les.Count);
        for (int i = 1; i < les.Count; i++)
        {
            Assert.True(les[i].Le > les[i - 1].Le, "le not ascending at " + i);
            Assert.True(les[i].N >= les[i - 1].N, "bucket counts not cumulative at " + i);
        }
        Assert.Equal(0.000001, les[0].Le);
        Assert.Equal(134.217728, les[^2].Le);
        Assert.Equal(161, les[^1].N);
        Assert.Equal(160, les[^2].N); // the 300 s request is only in +Inf
        Assert.Equal(161, count);
        Assert.Contains("ublk_aot_request_duration_seconds_sum{device=\"3\",queue=\"1\"} 5.6E-06\n", text);
        Assert.Equal(1, CountOf(text, "# TYPE ublk_aot_request_duration_seconds histogram\n"));
    }

    [Fact]
    public void Promtool_really_refuses_a_bad_exposition()
    {
        // The validator can fail: a counter without _total, and a metric family split in two groups, are refused.
        // (promtool 2.42 does not check a histogram's +Inf bucket: the test above does.)
        Integration.IntegrationEnv.Result r = Integration.IntegrationEnv.Run(Promtool.Path, "check metrics", 60_000,
            stdin: "# HELP x_requests A counter.\n# TYPE x_requests counter\nx_requests 1\n");
        Assert.True(r.Code != 0, r.ToString());
        r = Integration.IntegrationEnv.Run(Promtool.Path, "check metrics", 60_000,
            stdin: "# HELP x_total A counter.\n# TYPE x_total counter\nx_total 1\n# HELP x_total A counter.\n# TYPE x_total counter\nx_total{a=\"1\"} 1\n");
        Assert.True(r.Code != 0, r.ToString());
    }

    private static int CountOf(string s, string part)
    {
        int n = 0;
        for (int at = s.IndexOf(part, StringComparison.Ordinal); at >= 0; at = s.IndexOf(part, at + 1, StringComparison.Ordinal)) n++;
        return n;
    }

    [Theory]
    [InlineData(1, "0.000001")]
    [InlineData(2, "0.000002")]
    [InlineData(1024, "0.001024")]
    [InlineData(1_000_000, "1")]
    [InlineData(134_217_728, "134.217728")]
    public void Bucket_bounds_are_exact_decimal_seconds(long us, string text) => Assert.Equal(text, StatsReport.Seconds(us));

    [Fact]
    public void Json_has_the_documented_fields_and_the_table_reads_it()
    {
        string json = StatsReport.Json(Sample());
        Assert.DoesNotContain("\n", json);
        using JsonDocument doc = JsonDocument.Parse(json);
        JsonElement r = doc.RootElement;
        Assert.Equal(3u, r.GetProperty("device").GetUInt32());
        Assert.Equal("LIVE", r.GetProperty("state").GetString());
        Assert.Equal("copy", r.GetProperty("io_mode").GetString());
        Assert.Equal("reissue", r.GetProperty("recovery").GetString());
        Assert.True(r.GetProperty("latency_timing").GetBoolean());
        Assert.Equal(4242, r.GetProperty("pid").GetInt32());
        Assert.Equal(LatencyHistogram.FiniteBuckets, r.GetProperty("latency_bounds_us").GetArrayLength());
        JsonElement t = r.GetProperty("total");
        Assert.Equal(127, t.GetProperty("reads").GetInt64());
        Assert.Equal(40, t.GetProperty("writes").GetInt64());
        Assert.Equal(3, t.GetProperty("flushes").GetInt64());
        Assert.Equal(1, t.GetProperty("discards").GetInt64());
        Assert.Equal(2, t.GetProperty("write_zeroes").GetInt64());
        Assert.Equal(1, t.GetProperty("errors").GetInt64());
        Assert.Equal(127 * 4096, t.GetProperty("bytes_read").GetInt64());
        Assert.Equal(40 * 65536, t.GetProperty("bytes_written").GetInt64());
        Assert.Equal(2, t.GetProperty("in_flight").GetInt64());
        JsonElement lat = t.GetProperty("latency_us");
        Assert.Equal(168, lat.GetProperty("count").GetInt64());
        Assert.Equal(300_000_000.0, lat.GetProperty("max").GetDouble());
        double p50 = lat.GetProperty("p50").GetDouble(), p90 = lat.GetProperty("p90").GetDouble(),
            p99 = lat.GetProperty("p99").GetDouble(), p999 = lat.GetProperty("p99_9").GetDouble();
        Assert.True(p50 > 8 && p50 <= 32 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= 300_000_000.0, json);
        JsonElement qs = r.GetProperty("queues");
        Assert.Equal(2, qs.GetArrayLength());
        Assert.Equal(1, qs[1].GetProperty("queue").GetInt32());
        Assert.Equal(1, qs[1].GetProperty("cpu").GetInt32());
        Assert.Equal(7, qs[1].GetProperty("latency_buckets")[0].GetInt64());
        Assert.Equal(LatencyHistogram.BucketCount, qs[0].GetProperty("latency_buckets").GetArrayLength());

        var table = new StringWriter();
        StatsReport.PrintTable(r, table);
        string text = table.ToString();
        Assert.Contains("ublk device 3 (/dev/ublkb3): state LIVE, io mode copy, recovery reissue, server pid 4242", text);
        Assert.Contains("QUEUE", text);
        Assert.Contains("\nall ", text);
        Assert.Equal("850us", StatsReport.Duration(850));
        Assert.Equal("12.5ms", StatsReport.Duration(12_500));
        Assert.Equal("3.2s", StatsReport.Duration(3_200_000));
    }

    [Theory]
    [InlineData("127.0.0.1:9101", 2, 9101)]
    [InlineData("0.0.0.0:80", 2, 80)]
    [InlineData("[::1]:9101", 10, 9101)]
    [InlineData("[::]:65535", 10, 65535)]
    [InlineData("unix:/run/ublk-aot/metrics.sock", 1, 0)]
    public void Metrics_endpoints_parse(string v, int family, int port)
    {
        MetricsEndpoint? ep = MetricsEndpoint.TryParse(v, out string? error);
        Assert.True(ep.HasValue, error);
        Assert.Equal(family, ep.Value.Family);
        Assert.Equal(port, ep.Value.Port);
    }

    [Theory]
    [InlineData("127.0.0.1:0", "port 0 (any free port) is refused")]
    [InlineData("127.0.0.1:65536", "bad port")]
    [InlineData("127.0.0.1", "got '127.0.0.1'")]
    [InlineData("localhost:9101", "'localhost' is not an IPv4 address")]
    [InlineData("::1:9101", "an IPv6 address goes in brackets")]
    [InlineData("[::1]", "got '[::1]'")]
    [InlineData("[127.0.0.1]:80", "'127.0.0.1' is not an IPv6 address")]
    [InlineData("unix:", "no path")]
    [InlineData("http://127.0.0.1:80", "got 'http://127.0.0.1:80'")]
    public void Bad_metrics_endpoints_are_refused_in_one_line(string v, string why)
    {
        Assert.Null(MetricsEndpoint.TryParse(v, out string? error));
        Assert.StartsWith("--metrics must be unix:PATH or IP:PORT", error);
        Assert.Contains(why, error);
        Assert.DoesNotContain("\n", error);
    }

    private static int FreePort()
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)s.LocalEndPoint!).Port;
    }

    /// <summary>One raw HTTP exchange: sends <paramref name="request"/>, reads until the server closes.</summary>
    private static string Exchange(EndPoint ep, string request)
    {
        using var s = new Socket(ep.AddressFamily, SocketType.Stream, ep is UnixDomainSocketEndPoint ? ProtocolType.Unspecified : ProtocolType.Tcp);
        s.ReceiveTimeout = 10_000;
        s.Connect(ep);
        s.Send(Encoding.ASCII.GetBytes(request));
        var got = new MemoryStream();
        var buf = new byte[8192];
        int n;
        while ((n = s.Receive(buf)) > 0) got.Write(buf, 0, n);
        return Encoding.UTF8.GetString(got.ToArray());
    }

    private static void AssertMetricsReply(string reply, string body)
    {
        Assert.StartsWith("HTTP/1.1 200 OK\r\n", reply);
        Assert.Contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n", reply);
        Assert.Contains("\r\nContent-Length: " + Encoding.UTF8.GetByteCount(body) + "\r\n", reply);
        Assert.Contains("\r\nConnection: close\r\n", reply);
        Assert.EndsWith("\r\n\r\n" + body, reply);
    }

    [Fact]
    public void Http_endpoint_on_tcp_answers_metrics_404_405_400_and_refuses_a_port_in_use()
    {
        int port = FreePort();
        MetricsEndpoint ep = MetricsEndpoint.TryParse("127.0.0.1:" + port, out _)!.Value;
        string body = StatsReport.Prometheus(Sample());
        using (MetricsServer m = MetricsServer.Bind(ep))
        {
            m.Start(() => body);
            var at = new IPEndPoint(IPAddress.Loopback, port);
            AssertMetricsReply(Exchange(at, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"), body);
            AssertMetricsReply(Exchange(at, "GET /metrics?x=1 HTTP/1.0\n\n"), body); // bare LFs, a query, HTTP/1.0
            string head = Exchange(at, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            Assert.StartsWith("HTTP/1.1 200 OK\r\n", head);
            Assert.EndsWith("\r\n\r\n", head);
            Assert.StartsWith("HTTP/1.1 404 Not Found\r\n", Exchange(at, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
            Assert.StartsWith("HTTP/1.1 404 Not Found\r\n", Exchange(at, "GET /metrics/x HTTP/1.1\r\nHost: x\r\n\r\n"));
            string post = Exchange(at, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
            Assert.StartsWith("HTTP/1.1 405 Method Not Allowed\r\n", post);
            Assert.Contains("\r\nAllow: GET, HEAD\r\n", post);
            Assert.StartsWith("HTTP/1.1 400 Bad Request\r\n", Exchange(at, "hello\r\n\r\n"));
            // Nothing but a connect and a close does not stop the next request.
            using (var idle = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)) idle.Connect(at);
            AssertMetricsReply(Exchange(at, "GET /metrics HTTP/1.1\r\n\r\n"), body);

            var e = Assert.Throws<UsageException>(() => MetricsServer.Bind(ep));
            Assert.Equal("serve: --metrics 127.0.0.1:" + port + ": address already in use", e.Message);
        }
        // Closed with its server: the port is free again.
        using (MetricsServer again = MetricsServer.Bind(ep)) { }
    }

    [Fact]
    public void Http_endpoint_on_ipv6_loopback()
    {
        using var probe = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        int port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        probe.Close();
        using MetricsServer m = MetricsServer.Bind(MetricsEndpoint.TryParse("[::1]:" + port, out _)!.Value);
        m.Start(() => "x_total 1\n");
        AssertMetricsReply(Exchange(new IPEndPoint(IPAddress.IPv6Loopback, port), "GET /metrics HTTP/1.1\r\n\r\n"), "x_total 1\n");
    }

    [Fact]
    public unsafe void Http_endpoint_on_a_unix_socket_replaces_a_stale_one_and_removes_its_own()
    {
        string dir = Path.Combine(Path.GetTempPath(), "ublk-metrics-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            string path = Path.Combine(dir, "m.sock");
            // What a SIGKILLed server leaves: the socket file, nobody listening (bound and closed with libc, since
            // .NET's Socket.Dispose would unlink it).
            int fd = global::Ublk.Aot.Interop.Libc.Socket(1, 1, 0);
            Assert.True(global::Ublk.Aot.Interop.Libc.UnixAddress(path, out var addr));
            Assert.Equal(0, global::Ublk.Aot.Interop.Libc.Bind(fd, &addr, 110));
            global::Ublk.Aot.Interop.Libc.Close(fd);

            MetricsEndpoint ep = MetricsEndpoint.TryParse("unix:" + path, out _)!.Value;
            string body = StatsReport.Prometheus(Sample());
            using (MetricsServer m = MetricsServer.Bind(ep))
            {
                m.Start(() => body);
                AssertMetricsReply(Exchange(new UnixDomainSocketEndPoint(path), "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"), body);
                Assert.StartsWith("HTTP/1.1 404 Not Found\r\n", Exchange(new UnixDomainSocketEndPoint(path), "GET /other HTTP/1.1\r\n\r\n"));
                // A live listener is not stolen.
                var e = Assert.Throws<UsageException>(() => MetricsServer.Bind(ep));
                Assert.Contains("another process listens on " + path, e.Message);
            }
            Assert.False(File.Exists(path), "the metrics socket outlived its server");
            File.WriteAllText(path, "not a socket");
            var e2 = Assert.Throws<UsageException>(() => MetricsServer.Bind(ep));
            Assert.Contains(path + " exists and is not a socket", e2.Message);
        }
        finally { Directory.Delete(dir, true); }
    }
}
