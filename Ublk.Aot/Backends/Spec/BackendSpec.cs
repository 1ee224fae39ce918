using System;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>Receives the concrete backend struct type from a <see cref="BackendSpec"/> (a generic visitor, no reflection).</summary>
public interface IBackendConsumer<TResult>
{
    /// <summary><paramref name="files"/>: fds each queue registers after /dev/ublkcN (see UblkQueue.FileIndex).</summary>
    TResult Use<TBackend>(TBackend backend, BackendCaps caps, int[] files) where TBackend : struct, IBackend;
}

/// <summary>
/// Wraps a leaf backend struct in another (fault injection today). A separate visitor, so that a wrapper never
/// re-enters <see cref="BackendSpec.Build{TResult}"/> generically: NativeAOT rejects the unbounded generic
/// recursion (<c>Wrapper&lt;Wrapper&lt;…&gt;&gt;</c>) that would follow.
/// </summary>
public interface IBackendWrapper
{
    /// <summary>The wrapping backend's name, for messages ("fault").</summary>
    string Name { get; }

    TResult Wrap<TInner, TResult>(TInner inner, BackendCaps caps, int[] files, IBackendConsumer<TResult> consumer)
        where TInner : struct, IBackend;
}

/// <summary>A parsed --backend SPEC: owns the shared resources (files, memory) and builds the per-queue struct.</summary>
public abstract class BackendSpec : IDisposable
{
    /// <summary>How the start-up line names it, e.g. "mem:268435456".</summary>
    public abstract string Describe();

    public abstract TResult Build<TResult>(IBackendConsumer<TResult> consumer);

    /// <summary>Builds this backend inside <paramref name="wrapper"/>'s; only leaf specs can be wrapped (one level).</summary>
    public virtual TResult BuildWrapped<TResult>(IBackendWrapper wrapper, IBackendConsumer<TResult> consumer)
        => throw new SpecException("backend " + wrapper.Name + ": cannot wrap " + Describe());

    // Live resize (`ublk-aot resize`, UPDATE_SIZE). The server calls these on its control thread, never a queue thread:
    // CheckResize first (changes nothing), then GrowTo before UPDATE_SIZE or ShrinkTo after it.

    /// <summary>Why this backend cannot serve <paramref name="newSize"/> bytes, or null. Changes nothing.</summary>
    public virtual string? CheckResize(ulong newSize) => Describe() + " cannot be resized";

    /// <summary>Growth, before the kernel learns the new size: makes room. Returns what takes it back if the kernel refuses.</summary>
    public virtual Action GrowTo(ulong newSize) => static () => { };

    /// <summary>Shrink, after the kernel has the new size.</summary>
    public virtual void ShrinkTo(ulong newSize) { }

    /// <summary>The SPEC <paramref name="text"/> (this backend's) rewritten to open it at <paramref name="newSize"/>, for the state file.</summary>
    public virtual string Respec(string text, ulong newSize) => text;

    public virtual void Dispose() { }
}

/// <summary>A spec that makes one concrete backend struct.</summary>
public abstract class LeafSpec<TBackend> : BackendSpec where TBackend : struct, IBackend
{
    public abstract BackendCaps Caps { get; }
    protected virtual int[] Files => [];
    protected abstract TBackend Make();

    public override TResult Build<TResult>(IBackendConsumer<TResult> consumer) => consumer.Use(Make(), Caps, Files);

    public override TResult BuildWrapped<TResult>(IBackendWrapper wrapper, IBackendConsumer<TResult> consumer)
        => wrapper.Wrap(Make(), Caps, Files, consumer);
}
