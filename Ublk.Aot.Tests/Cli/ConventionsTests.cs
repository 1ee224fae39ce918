using System;
using System.Diagnostics;
using System.IO;
using System.Linq;
using Ublk.Aot.Cli;
using Xunit;

namespace Ublk.Aot.Tests.Cli;

/// <summary>
/// The conventions of issue 12 on the host, against the static binary: --help for every command, the man page and
/// the bash completion generated from the one command table (and the copies in dist/ equal to what it generates),
/// the page rendered by groff without a warning, the completion sourced by bash, the exit status documented.
/// </summary>
public sealed class ConventionsTests
{
    private static readonly string Root = Integration.IntegrationEnv.RepoRoot;
    private static readonly string Binary = Path.Combine(Root, "out", "ublk-aot");

    private static (int Code, string Out, string Err) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (string a in args) psi.ArgumentList.Add(a);
        Process p;
        try { p = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception e) { throw new Xunit.Sdk.XunitException(file + " cannot be run (" + e.Message + "): scripts/vm-setup.sh installs it"); }
        using (p)
        {
            p.StandardInput.Close();
            var o = p.StandardOutput.ReadToEndAsync();
            string e = p.StandardError.ReadToEnd();
            Assert.True(p.WaitForExit(60_000), file + " " + string.Join(' ', args) + " did not exit");
            return (p.ExitCode, o.Result, e);
        }
    }

    private static (int Code, string Out, string Err) Aot(params string[] args)
    {
        Assert.True(File.Exists(Binary), "missing " + Binary + ": run ./build.sh first");
        return Run(Binary, args);
    }

    private static Command[] Visible => CommandTable.Commands.Where(c => !c.Hidden).ToArray();

    [Fact]
    public void Every_command_has_help_on_stdout_with_exit_0()
    {
        const string exit = "exit status: 0 ok, 1 runtime failure, 2 usage or environment error";
        foreach (Command c in Visible)
        {
            var a = Aot(c.Name, "--help");
            var b = Aot("help", c.Name);
            var h = Aot(c.Name, "-h");
            Assert.True(a.Code == 0 && b.Code == 0 && h.Code == 0, c.Name + ": exit " + a.Code + "/" + b.Code + "/" + h.Code + "\n" + a.Err + b.Err);
            Assert.Equal("", a.Err + b.Err + h.Err);
            Assert.Equal(a.Out, b.Out);
            Assert.Equal(a.Out, h.Out);
            Assert.Equal(CommandTable.Help(c), a.Out);
            Assert.StartsWith("usage: ublk-aot " + c.Synopsis + "\n", a.Out);
            Assert.Contains(exit, a.Out);
            foreach (Opt o in c.Options.Where(o => !o.Hidden)) Assert.Contains("  " + o.Usage + " ", a.Out);
        }
        var top = Aot("--help");
        Assert.Equal(0, top.Code);
        Assert.Equal(top.Out, Aot("help").Out);
        Assert.Contains(exit, top.Out);
        foreach (Command c in Visible) Assert.Contains("  " + c.Synopsis + "\n", top.Out);
        var none = Aot();
        Assert.Equal(2, none.Code);
        Assert.Equal("", none.Out);
        Assert.Equal(top.Out, none.Err);
    }

    [Fact]
    public void A_hidden_command_runs_but_is_in_no_usage_man_page_or_completion()
    {
        // udev-name is the udev rule's helper, not a user's command.
        Command udev = CommandTable.Find("udev-name")!;
        Assert.True(udev.Hidden);
        var r = Aot("udev-name", "ublkb4000000");
        Assert.True(r.Code == 0, "udev-name: " + r);
        Assert.Equal("", r.Out);
        Assert.DoesNotContain("udev-name", Aot("--help").Out);
        Assert.DoesNotContain("udev-name", CommandTable.Man());
        Assert.DoesNotContain("udev-name", CommandTable.BashCompletion());
        var bad = Aot("udev-name", "sda");
        Assert.Equal(2, bad.Code);
        Assert.StartsWith("ublk-aot: udev-name: expected a ublk disk's kernel name", bad.Err.Trim());
    }

    [Fact]
    public void Every_serve_option_in_the_table_is_known_to_the_parser()
    {
        // A valid value per option (the parser refuses a bad one in its own words, never as "unknown option").
        string Sample(Opt o) => o.Values.Length > 0 ? o.Values[0] : o.Name switch
        {
            "--backend" => "mem:1G", "--max-io" => "64K", "--cpus" => "0", "--metrics" => "127.0.0.1:9101", _ => "1",
        };
        foreach (Opt o in CommandTable.ServeOptions)
        {
            string[] argv = o.Name == "--backend" ? ["--backend", "mem:1G"] : o.Arg == null ? ["--backend", "mem:1G", o.Name] : ["--backend", "mem:1G", o.Name, Sample(o)];
            if (o.Name == "--config") continue; // read by ServeConfig, instead of the others (ServeConfigTests)
            Serve.Parse(argv);
        }
    }

    [Fact]
    public void The_copies_in_dist_are_what_the_binary_generates()
    {
        var man = Aot("help", "--man");
        var bash = Aot("help", "--bash-completion");
        Assert.Equal(0, man.Code);
        Assert.Equal(0, bash.Code);
        Assert.Equal(CommandTable.Man(), man.Out);
        Assert.Equal(CommandTable.BashCompletion(), bash.Out);
        const string again = ": regenerate it with out/ublk-aot help --man > dist/ublk-aot.1; out/ublk-aot help --bash-completion > dist/ublk-aot.bash";
        Assert.True(File.ReadAllText(Path.Combine(Root, "dist", "ublk-aot.1")) == man.Out, "dist/ublk-aot.1 differs from the table" + again);
        Assert.True(File.ReadAllText(Path.Combine(Root, "dist", "ublk-aot.bash")) == bash.Out, "dist/ublk-aot.bash differs from the table" + again);
    }

    [Fact]
    public void Groff_renders_the_man_page_without_a_warning()
    {
        string page = Path.Combine(Root, "dist", "ublk-aot.1");
        var r = Run("groff", "-man", "-Tutf8", "-ww", "-z", page);
        Assert.True(r.Code == 0 && r.Err == "", "groff -man -Tutf8 -ww: exit " + r.Code + "\n" + r.Err);
        // No hyphenation, long lines: words stay whole for the checks below.
        var text = Run("groff", "-man", "-Tascii", "-P-cbou", "-rHY=0", "-rLL=300n", page);
        Assert.Equal(0, text.Code);
        string o = text.Out;
        string flat = string.Join(' ', o.Split([' ', '\n'], StringSplitOptions.RemoveEmptyEntries));
        foreach (string section in new[] { "NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "BACKENDS", "JSON OUTPUT", "EXIT STATUS", "FILES" })
            Assert.Contains("\n" + section + "\n", o);
        foreach (Command c in Visible)
        {
            Assert.Contains(c.Synopsis, flat);
            foreach (Opt opt in c.Options.Where(x => !x.Hidden)) Assert.Contains(opt.Name, o);
            foreach (string f in c.JsonFields) Assert.Contains(f, o);
        }
        Assert.Contains("a usage or environment error", flat);
    }

    private static string Complete(string line)
    {
        string script = "source \"$1\"; read -ra W <<< \"$2\"; [[ $2 == *' ' ]] && W+=(''); COMP_WORDS=(\"${W[@]}\"); " +
            "COMP_CWORD=$((${#W[@]} - 1)); _ublk_aot; printf '%s\\n' \"${COMPREPLY[@]}\"; complete -p ublk-aot >&2";
        var r = Run("/bin/bash", "--norc", "-c", script, "bash", Path.Combine(Root, "dist", "ublk-aot.bash"), line);
        Assert.True(r.Code == 0, "bash: " + r.Err);
        Assert.Equal("complete -F _ublk_aot ublk-aot", r.Err.Trim());
        return string.Join(' ', r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Theory]
    [InlineData("ublk-aot se", "serve")]
    [InlineData("ublk-aot ", "serve recover upgrade resize stats list del features install help")]
    [InlineData("ublk-aot --t", "--timeout")]
    [InlineData("ublk-aot --timeout 5 li", "list")]
    [InlineData("ublk-aot serve --io-", "--io-mode")]
    [InlineData("ublk-aot serve --io-mode ", "auto copy user-copy zero-copy auto-buf-reg")]
    [InlineData("ublk-aot serve --io-mode z", "zero-copy")]
    [InlineData("ublk-aot serve --recovery ", "reissue fail-io off")]
    [InlineData("ublk-aot serve --block-size ", "512 4096")]
    [InlineData("ublk-aot serve --queues ", "")]
    [InlineData("ublk-aot list --", "--json --timeout --help")]
    [InlineData("ublk-aot del --", "--all --dead --safe --timeout --help")]
    [InlineData("ublk-aot help fe", "features")]
    [InlineData("ublk-aot recover 3 --re", "--read-only --recovery")]
    public void Bash_completes_from_the_table(string line, string expected) => Assert.Equal(expected, Complete(line));

    [Fact]
    public void Bash_completes_file_names_for_a_path()
    {
        string dir = Directory.CreateTempSubdirectory("ublk-compl").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "new-ublk-aot"), "");
            Assert.Equal(Path.Combine(dir, "new-ublk-aot"), Complete("ublk-aot upgrade 0 --binary " + dir + "/new"));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Exit_codes_are_documented_in_the_readme()
    {
        string readme = File.ReadAllText(Path.Combine(Root, "README.md"));
        Assert.Contains("## Conventions", readme);
        Assert.Contains("| 0 | ok", readme);
        Assert.Contains("| 1 | runtime failure", readme);
        Assert.Contains("| 2 | usage or environment error", readme);
    }
}
