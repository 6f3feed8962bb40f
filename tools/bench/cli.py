"""The command line (five subcommands: mixer, backbone, model, report, compile) and the run
loop that measures each case, writes results after every case and resumes."""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile

import torch

from fla_mm.ops.fused_bi import FusedBiConfig
from fla_mm.ops.fused_bi.config import FORMS

from .compile import compile_times
from .level_backbone import COMPILE_MODES, backbone_cases
from .level_mixer import OP_ROWS, mixer_cases
from .level_model import model_cases
from .report import case_key, finish, fmt, load_previous, merge_runs, method_info, write_results
from .timing import DTYPES, MODES, copy_bandwidth, measure, warm_device


DEFAULT_TOKENS = (196, 1024, 4096, 16384)
DEFAULT_RESOLUTIONS = (224, 512, 1024, 2048)


def _add_fused_bi(p):
    p.add_argument('--fused-bi', type=json.loads, default=None, metavar='JSON',
                   help='the fused bi-scan kernel variant, fields of '
                        'fla_mm.ops.fused_bi.FusedBiConfig, e.g. \'{"bwd_warps": 8, '
                        '"long_tokens": 2048}\': passed as config= to the op level\'s fused '
                        'ops and as the bi_config option to the mixers of the fused families')


def _add_common(p, default_batch, profile_steps=0):
    p.add_argument('--batch-size', type=int, nargs='+', default=list(default_batch),
                   help='batch size, or several for a sweep')
    p.add_argument('--dtype', nargs='+', choices=list(DTYPES), default=None,
                   help='default: bf16 on cuda, fp32 on cpu')
    p.add_argument('--mode', nargs='+', choices=MODES, default=list(MODES),
                   help="fwd = inference (eval, no_grad); fwdbwd = train forward + backward")
    p.add_argument('--iters', type=int, default=20, help='timed calls per case')
    p.add_argument('--warmup', type=int, default=5, help='untimed calls after the first one')
    p.add_argument('--device', choices=['cuda', 'cpu'], default=None,
                   help='default: cuda when available')
    p.add_argument('--out', default=None, help='output folder (default work_dirs/benchmark/LEVEL)')
    p.add_argument('--cuda-graph', action='store_true',
                   help='also capture each case in a torch.cuda.CUDAGraph and time its replay')
    p.add_argument('--profile-steps', type=int, default=profile_steps,
                   help='steps of each case (and of its graph replay) run under the PyTorch '
                        'profiler for GPU kernel time, kernels and launches per step '
                        '(0: none)')
    p.add_argument('--case-budget', type=float, default=120.0,
                   help='seconds one case may spend timing; slower cases run fewer iterations '
                        '(at least 3, the count is in the row)')
    p.add_argument('--fresh-triton-cache', action='store_true',
                   help='compile into an empty Triton cache so that first calls include compiling')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (default: torch\'s own choice)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--list-cases', action='store_true',
                   help='print the cases the command would run, in order, and stop (sizes a '
                        'command for a time limit without a GPU)')
    _add_fused_bi(p)
    p.add_argument('--no-plots', action='store_true')
    p.add_argument('--size-order', choices=['desc', 'asc', 'given'], default='desc',
                   help="order of sizes and batch sizes: FLA's autotune keys leave out L and B, "
                        'so each kernel is tuned on the first shape it meets (desc: the largest)')
    p.add_argument('--resume', action='store_true',
                   help='keep the rows already in DIR/results.json: cases done there (status ok) '
                        'are not run again, other rows stay in the table (so several commands, '
                        'or a run cut off by a time limit, fill one table)')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Speed and memory of fla_mm mixers / backbones / models vs softmax attention',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest='level', required=True)

    p = sub.add_parser('mixer', help='raw ops and TokenMixer at token counts',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--families', nargs='+', default=['gla', 'simple_gla', 'retnet', 'transformer'],
                   help="mixer families; 'all' = every family of fla_mm.layers.FAMILIES")
    p.add_argument('--scans', nargs='+', default=['bi'], help='scan orders of the mixer level')
    p.add_argument('--tokens', type=int, nargs='+', default=list(DEFAULT_TOKENS),
                   help='sequence lengths L (laid out as a near-square grid for the scans)')
    p.add_argument('--heads', type=int, default=6)
    p.add_argument('--head-dim', type=int, default=64)
    p.add_argument('--levels', nargs='+', choices=['op', 'mixer'], default=None,
                   help='op = fla_mm.ops functions vs SDPA on [B, L, H, d]; mixer = TokenMixer '
                        '(default: both; op alone with --op-shapes backbone)')
    p.add_argument('--op-shapes', choices=['qkv', 'mixer', 'backbone'], default='qkv',
                   help="op level inputs: 'qkv' = q, k, v all [B, L, H, d]; 'mixer' = the "
                        "widths the family's TokenMixer uses (e.g. GLA's expand_k=0.5), which "
                        "shares compiled and autotuned kernels with the mixer level; "
                        "'backbone' = the q/k/v/gate shapes of every stage of --op-backbones "
                        'at --resolutions (instead of --tokens, --heads, --head-dim), with the '
                        'achieved bandwidth by minimal traffic')
    p.add_argument('--op-backbones', nargs='+', default=['FLAPyramid:tiny', 'FLAPlain:small'],
                   metavar='CLASS:ARCH',
                   help='--op-shapes backbone: fla_mm backbones and named sizes whose stages '
                        'are read off their arch tables')
    p.add_argument('--resolutions', type=int, nargs='+', default=[512, 1024],
                   help='--op-shapes backbone: input resolutions (square) of the backbones')
    p.add_argument('--mixer-cfg', type=json.loads, default=None,
                   help='extra TokenMixer options as JSON, e.g. \'{"direction_gates": true}\'')
    p.add_argument('--fused-segments', type=int, nargs='+', default=[0],
                   help='op level: time the fused bi-scan kernel with each of these numbers '
                        'of segments per sweep (FusedBiConfig.segments); 0: as --fused-bi '
                        'says, by default by sequence length, as the mixers run it')
    p.add_argument('--fused-forms', nargs='+', choices=FORMS, default=None,
                   help='op level: time the fused bi-scan kernel in each of these forms '
                        '(FusedBiConfig.form) in the same run, one row each (default: the '
                        "form --fused-bi says); --fused-segments applies to 'sweep' rows")
    p.add_argument('--op-rows', nargs='+', choices=OP_ROWS, default=None,
                   help="op level rows per family: 'uni' = the op over one direction, "
                        "'two_call' = both directions as two calls batched, 'fused' = "
                        "fla_mm's fused bi-scan kernel (SDPA is always timed); e.g. 'fused' "
                        "alone skips FLA's autotuning of its own kernels on a fresh GPU "
                        "(default: all; with --op-shapes backbone the bi-scans, two_call fused)")
    _add_common(p, [8])

    p = sub.add_parser('backbone', help='fla_mm backbones at image resolutions',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--backbones', nargs='+', default=None,
                   help='fla_mm backbone classes (default: every FLA* backbone fla_mm exports)')
    p.add_argument('--arch', default='tiny',
                   help='a named size of each backbone, or a JSON dict, e.g. '
                        '\'{"embed_dims": [32, 64, 128, 256], "depths": [1, 1, 1, 1], '
                        '"num_heads": [1, 2, 4, 8]}\'')
    p.add_argument('--families', nargs='+', default=['gla'],
                   help="mixer families ('transformer', the baseline, is always added)")
    p.add_argument('--scans', nargs='+', default=['bi'])
    p.add_argument('--backbone-cfg', type=json.loads, default=None,
                   help='extra backbone arguments as JSON, e.g. \'{"with_cp": true}\'')
    p.add_argument('--baselines', nargs='*', choices=['swin', 'convnext'],
                   default=['swin', 'convnext'],
                   help='other backbones, where importable (Swin: mmseg, else torchvision; '
                        'ConvNeXt: torchvision); named archs only')
    p.add_argument('--resolutions', type=int, nargs='+', default=list(DEFAULT_RESOLUTIONS))
    p.add_argument('--compile', nargs='+', choices=COMPILE_MODES, default=['none'],
                   help="how every model runs: 'none' = eager, else torch.compile with that "
                        "mode ('default' = torch.compile(model)); one row per mode, the first "
                        'call (compile) timed apart from the steps')
    p.add_argument('--fla-compile', nargs='+', choices=COMPILE_MODES, default=None,
                   help='the modes of the fla_mm backbones and their softmax twins, where '
                        'they differ from the baselines\' (default: --compile)')
    p.add_argument('--compile-backend', default='inductor',
                   help="torch.compile backend; 'aot_eager' traces (Dynamo + AOT autograd) "
                        "without generating code, for quick CPU checks (mode 'default' only)")
    p.add_argument('--backbone-cuda-graph', nargs='?', const='also', default=None,
                   choices=['also', 'only'],
                   help="also run each fla_mm backbone with cuda_graph=True (its own CUDA "
                        "graph of forward and backward; CUDA, mode fwdbwd); 'only': the "
                        "fla_mm backbones run that way alone (e.g. the fast path, "
                        "cuda_graph=True with --fla-compile default, without its slower rows)")
    p.add_argument('--no-twin', action='store_true',
                   help="skip each fla_mm backbone's softmax twin (mixer='transformer')")
    _add_common(p, [8], profile_steps=3)

    p = sub.add_parser('model', help='a segmentor / detector built from a config',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('config', help='config file path (mmseg or mmdet, by its default_scope)')
    p.add_argument('--resolutions', type=int, nargs='+', default=[512])
    p.add_argument('--no-baseline', action='store_true',
                   help="skip the same model with backbone.mixer='transformer'")
    p.add_argument('--cfg-options', nargs='+', default=None,
                   help='override config entries, e.g. model.backbone.scan=uni')
    _add_common(p, [2])

    p = sub.add_parser('compile', help="cold compile time of fla_mm's fused bi-scan kernels "
                       'for a GPU architecture; needs no GPU (Triton + its ptxas)',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--kernels', nargs='+', choices=['scalar', 'gla'], default=['scalar', 'gla'],
                   help='scalar: simple_gla / RetNet decay; gla: per key channel')
    p.add_argument('--arch', type=int, default=90, help='CUDA compute capability (90: Hopper)')
    p.add_argument('--dtype', choices=list(DTYPES), default='bf16')
    p.add_argument('--head-dim', type=int, default=64)
    _add_fused_bi(p)

    p = sub.add_parser('report', help='merge the results.json of several runs (e.g. runs cut '
                       'off by a time limit) into one table, JSON and plots',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('runs', nargs='+', help='output folders (or results.json files) of earlier '
                   'runs on one device; where two runs measured the same case, the later wins')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--best-across-runs', action='store_true',
                   help='backbone level: hold each row against the fastest Swin / ConvNeXt of '
                        'all the runs merged (commands split by a time limit on one machine), '
                        'not of its own run only')
    p.add_argument('--no-plots', action='store_true')

    args = parser.parse_args(argv)
    if getattr(args, 'fused_bi', None) is not None:
        if not isinstance(args.fused_bi, dict):
            raise SystemExit('--fused-bi: a JSON object of FusedBiConfig fields expected')
        try:
            args.fused_bi = FusedBiConfig.from_dict(args.fused_bi)
        except (TypeError, ValueError) as exc:
            raise SystemExit(f'--fused-bi: {exc}')
    if args.level in ('report', 'compile'):
        return args
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is visible (use --device cpu)')
    if args.dtype is None:
        args.dtype = ['bf16'] if args.device == 'cuda' else ['fp32']
    if args.cuda_graph and args.device != 'cuda':
        parser.error('--cuda-graph needs --device cuda')
    if args.iters < 1 or args.warmup < 0 or args.profile_steps < 0:
        parser.error('--iters must be >= 1, --warmup and --profile-steps >= 0')
    if args.level == 'mixer' and args.levels is None:
        args.levels = ['op'] if args.op_shapes == 'backbone' else ['op', 'mixer']
    if args.level == 'mixer' and args.op_rows is None:
        args.op_rows = ['two_call', 'fused'] if args.op_shapes == 'backbone' else list(OP_ROWS)
    if args.level == 'mixer' and args.op_shapes == 'backbone' and 'mixer' in args.levels:
        parser.error('--op-shapes backbone times the ops (--levels op); the mixers at '
                     'backbone sizes are the backbone level')
    if args.level == 'backbone' and args.fla_compile is None:
        args.fla_compile = list(args.compile)
    if min(getattr(args, 'fused_segments', [0])) < 0:
        parser.error('--fused-segments: segment counts must be >= 1, or 0 for the default')
    if args.out is None:
        args.out = osp.join('work_dirs', 'benchmark', args.level)
    return args


def main(argv=None):
    """Run one subcommand; returns what it measured or wrote (the tests read it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.level == 'compile':
        return compile_times(args)
    if args.level == 'report':
        method, rows = merge_runs(args.runs)
        method['best_across_runs'] = args.best_across_runs
        os.makedirs(args.out, exist_ok=True)
        return finish(args, method, rows)
    if args.fresh_triton_cache:
        os.environ['TRITON_CACHE_DIR'] = tempfile.mkdtemp(prefix='triton_cache_')
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = dict(mixer=mixer_cases, backbone=backbone_cases, model=model_cases)[args.level](args)
    if args.list_cases:
        for i, case in enumerate(cases):
            print(f'[{i + 1}/{len(cases)}] ' + ' '.join(
                f'{k}={case.meta[k]}' for k in ('level', 'name', 'shape', 'family', 'scan',
                                                 'variant', 'size', 'batch', 'dtype', 'mode')
                if case.meta.get(k) not in (None, '-')) +
                (f' [skipped: {case.skip}]' if case.skip else ''))
        return dict(cases=[dict(c.meta, skip=c.skip) for c in cases])
    method = method_info(args, argv)
    print(f"[benchmark] {len(cases)} cases on {method['device']} "
          f"(torch {torch.__version__}, triton {method['versions']['triton']}, "
          f"fla {method['versions']['fla']}; ops backend: {method['ops_backend']})", flush=True)
    warm_device(args.device)
    if any(c.meta.get('level') == 'op' for c in cases):
        method['copy_bandwidth'] = copy_bandwidth(args.device)
        print(f"[benchmark] peak copy bandwidth: {method['copy_bandwidth']['gbps']:.0f} GB/s "
              f"(device-to-device copy of {method['copy_bandwidth']['mib']} MiB, read + "
              f'write)', flush=True)
    os.makedirs(args.out, exist_ok=True)
    old = load_previous(args, method)
    done = {}
    for row in old:
        if str(row.get('status', '')).startswith('ok'):
            done[case_key(row)] = row
    keys = [case_key(c.meta) for c in cases]
    rows = [r for r in old if case_key(r) not in set(keys)]
    for i, (case, key) in enumerate(zip(cases, keys)):
        if key in done:
            rows.append(done[key])
            print(f'[{i + 1}/{len(cases)}] kept from the previous run: {key}', flush=True)
            continue
        row = measure(case, args)
        if row.get('traffic_bytes'):       # bandwidths are held against this run's copy
            row['copy_gbps'] = method['copy_bandwidth']['gbps']
        if 'commands' in method:            # --resume: which command measured the row
            row['run'] = len(method['commands'])
        rows.append(row)
        extra = ''.join(f', {label} {fmt(row[k])}' for k, label in (
            ('variant', 'as'), ('shape', 'shape'), ('kernel_ms', 'kernels ms/step'),
            ('kernels', 'kernels/step'), ('graph_median_ms', 'graph ms')) if row.get(k))
        if row.get('traffic_bytes') and row.get('median_ms'):
            extra += f", {row['traffic_bytes'] / row['median_ms'] / 1e6:.1f} GB/s (min traffic)"
        print(f"[{i + 1}/{len(cases)}] {row['level']} {row['name']} {row['family']} "
              f"{row['scan']} size={row['size']} B={row['batch']} {row['dtype']} {row['mode']}: "
              f"median {fmt(row['median_ms'])} ms, first {fmt(row['first_call_ms'])} ms, "
              f"peak {fmt(row['peak_mem_mib'])} MiB{extra} [{row['status']}]", flush=True)
        write_results(args.out, method, rows)     # after every case: a cut-off run keeps them
    return finish(args, method, rows)
