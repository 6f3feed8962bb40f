"""The ``compile`` level: cold compile time, registers and spills of every kernel variant the
fused bi-scan launches, for a GPU architecture, without a GPU (Triton lowers to PTX and runs
its bundled ptxas)."""
import os
import os.path as osp
import re
import subprocess
import tempfile
import time
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from fla_mm.ops.fused_bi import FusedBiConfig
from fla_mm.ops.fused_bi import launch as fb

from .timing import torch_dtype


def compile_times(args):
    """Compile every kernel variant a fused bi-scan launches (forward, backward, and with
    segments the two state kernels) into an empty Triton cache for ``args.arch``, as the first
    call on a fresh machine does, and print the seconds each took. No GPU is needed: Triton
    lowers to PTX and runs its bundled ptxas."""
    with mock.patch.dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix='triton_cache_')):
        return _compile_times(args)


def _compile_times(args):
    config = FusedBiConfig.coerce(args.fused_bi)
    dtype = torch_dtype(args.dtype)
    data = {torch.bfloat16: '*bf16', torch.float16: '*fp16', torch.float32: '*fp32'}[dtype]
    fp32_buffers = {'g', 'dg', 'dg_tot', 'seg_S', 'seg_G', 'seg_dH', 'seg_E', 'S', 'G', 'Cq',
                    'out', 'rot'}
    ints = {'T', 'H', 'sg_d', 'sg_b', 'sg_t', 'sg_h', 'sq_d', 'CPS', 'NSEG', 'NT', 'ROWS'}
    d = args.head_dim
    target = GPUTarget('cuda', args.arch, 32)
    rows = []
    for kind in args.kernels:
        per_channel = kind == 'gla'
        meta = fb._meta(torch.empty(1, 1, 1, d, dtype=dtype), torch.empty(1, 1, 1, d),
                        per_channel)
        for segmented, variants in _variants(meta, per_channel, config):
            for name, fn, consts, backward in variants:
                sig, cx = {}, {}
                for i, n in enumerate(fn.arg_names):
                    if n in consts:
                        sig[n], cx[(i,)] = 'constexpr', consts[n]
                    else:
                        sig[n] = ('i32' if n in ints else 'fp32' if n == 'scale' else
                                  '*fp32' if n in fp32_buffers else data)
                t0 = time.perf_counter()
                compiled = triton.compile(ASTSource(fn, sig, cx), target=target,
                                          options=fb._launch_options(meta, backward, config))
                seconds = time.perf_counter() - t0
                row = dict(kernels=kind, form=config.form, segmented=segmented, kernel=name,
                           seconds=seconds,
                           cubin_bytes=len(compiled.asm['cubin']),
                           **_ptxas_usage(compiled.asm['ptx'], args.arch))
                rows.append(row)
                print(f"[compile] {kind:6s} {_label(config, segmented):11s} "
                      f'{name:26s} {seconds:6.1f} s  cubin {row["cubin_bytes"] // 1024} KiB  '
                      f'{row["registers"]} registers, spills {row["spill_store_bytes"]} B '
                      f'stored / {row["spill_load_bytes"]} B loaded', flush=True)
    for kind in args.kernels:
        for segmented in sorted({r['segmented'] for r in rows if r['kernels'] == kind}):
            total = sum(r['seconds'] for r in rows if r['kernels'] == kind
                        and r['segmented'] == segmented)
            print(f"[compile] {kind} {_label(config, segmented)}: first call "
                  f'compiles {total:.1f} s (sm_{args.arch}, {args.dtype}, head dim {d}, triton '
                  f'{triton.__version__}, {os.cpu_count()} CPUs)')
    return rows


def _variants(meta, per_channel, config):
    """[(segmented, [(name, kernel, constexprs, backward)])]: every kernel variant the passes
    launch in ``config``'s form. The sweep (also for 'auto', whose chunked kernels a
    ``form='chunked'`` config lists): forward and backward with one segment, and with
    segments also the two segment-state kernels; the chunked form: each pass's chunk-state
    kernel, the pass over the states (the same kernel in both passes) and its main kernel,
    and per key channel the sum of the gate gradient's pieces; with a scalar decay also the
    chunk-state and main kernels that apply rotary embeddings (RetNet's default)."""
    if config.form == 'chunked':
        variants = []
        for rotary in (False,) if per_channel else (False, True):
            for backward in (False, True):
                name = ('backward' if backward else 'forward') + (', rotary' if rotary else '')
                (state, state_meta), (scan, scan_meta), (main, main_meta), *gate = \
                    fb._chunked_kernels(meta, per_channel, backward, f32=backward,
                                        config=config, rotary=rotary)
                variants += [(f'chunk states, {name}', state, state_meta, backward)]
                if not backward and not rotary:
                    variants += [('chunk state pass', scan, scan_meta, False)]
                variants += [(name, main, main_meta, backward)]
                variants += [('gate gradient sum', *kernel, True) for kernel in gate]
        return [(False, variants)]
    state, state_meta, fwd, _ = fb._kernels(meta, per_channel, backward=False)
    _, _, bwd, _ = fb._kernels(meta, per_channel, backward=True)
    result = []
    for segmented in (False, True):
        variants = [('forward', fwd, dict(meta, SEGMENTED=segmented), False),
                    ('backward', bwd, dict(meta, SEGMENTED=segmented, NEED_DG=True), True)]
        if segmented:
            variants += [('segment states, forward', state, dict(state_meta, BACKWARD=False),
                          False),
                         ('segment states, backward', state, dict(state_meta, BACKWARD=True),
                          True)]
        result.append((segmented, variants))
    return result


def _label(config, segmented):
    return 'chunked' if config.form == 'chunked' else 'segmented' if segmented else 'one segment'


def _ptxas_usage(ptx, arch):
    """Registers per thread and register-spill bytes of a kernel, from ``ptxas -v`` (the
    ptxas Triton ships): spills mean local-memory traffic inside the kernel's loops."""
    with tempfile.TemporaryDirectory() as d:
        path = osp.join(d, 'kernel.ptx')
        with open(path, 'w') as f:
            f.write(ptx)
        out = subprocess.run([get_ptxas(arch).path, f'-arch=sm_{arch}a', '-v', path, '-o',
                              osp.join(d, 'kernel.cubin')], capture_output=True, text=True)
    text = out.stdout + out.stderr
    num = (lambda pattern: int(m.group(1)) if (m := re.search(pattern, text)) else -1)
    return dict(registers=num(r'Used (\d+) registers'),
                spill_store_bytes=num(r'(\d+) bytes spill stores'),
                spill_load_bytes=num(r'(\d+) bytes spill loads'))
