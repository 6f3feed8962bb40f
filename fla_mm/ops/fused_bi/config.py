"""Which variant of the fused kernels a call runs, as one frozen object passed in: segment
counts and launch options change the speed, never the function (each variant is GPU-tested
against the same references), so they are a call's argument, not module state."""
import dataclasses
from collections.abc import Mapping
from typing import Optional


@dataclasses.dataclass(frozen=True)
class FusedBiConfig:
    """Kernel variant of :func:`fused_bi_decay_attn`; the defaults are the fastest of the
    variants timed (docs/benchmarks.md, the fused bidirectional kernel).

    A sweep (one direction over the sequence) can be cut into segments, one program each,
    after a small kernel has summed every segment's local state: more programs for the GPU at
    the cost of one more pass over k, v (and q, do). The forward and the backward choose their
    counts on their own (each sums its own segment states).

    Attributes:
        segments: segments per sweep in every pass, forced (tests,
            ``tools/benchmark.py --fused-segments``); None: chosen by length as below.
        long_tokens: sequences from this many tokens are cut into segments.
        long_segments: scalar decay (simple_gla, RetNet): segments per sweep, both passes,
            from ``long_tokens``.
        gla_fwd_segments: per-key-channel decay (GLA): segments of the forward from
            ``long_tokens``. GLA's backward, which already runs twice the programs, runs one
            segment at every length.
        fwd_warps, fwd_stages, bwd_warps, bwd_stages: Triton ``num_warps`` / ``num_stages``
            of the forward / backward launches (fixed, nothing is autotuned: a cold machine
            compiles one variant). Head dims above 64 take at least 8 warps.
        form: 'sweep' (one program per (batch x head, direction, segment) sweeps its chunks
            with the state in registers), 'chunked' (``chunked.py``: the chunks' own parts
            and local states in parallel over (chunk, batch x head), both directions in a
            program, a short sequential pass over the chunk states, then the states'
            contribution in parallel), for every decay family, or 'auto': by shape, as
            :meth:`runs_chunked` says (the sweep where ``segments`` is forced). The segment
            fields apply to the sweep only.
        scan_group, scan_block: the chunked form's pass over the chunk states
            (``chunked._chunk_scan_kernel``): chunks per load group (each group one parallel
            scan) and state elements per program.
        chunked_max_heads, chunked_min_tokens: 'auto' runs the chunked form, for both decay
            kinds, at batch x heads up to ``chunked_max_heads`` and sequences of
            ``chunked_min_tokens`` or more, where the sweep has too few programs to fill the
            GPU (every stage of FLAPyramid-T at B=2 and B=8 from 1024 tokens and up to 96
            sequences measured faster so, docs/benchmarks.md); the sweep elsewhere (many
            sequences, a few chunks each).
    """
    segments: Optional[int] = None
    long_tokens: int = 4096
    long_segments: int = 8
    gla_fwd_segments: int = 8
    fwd_warps: int = 4
    fwd_stages: int = 3
    bwd_warps: int = 4
    bwd_stages: int = 2
    form: str = 'auto'
    chunked_max_heads: int = 96
    chunked_min_tokens: int = 1024
    scan_group: int = 16
    scan_block: int = 64

    def __post_init__(self):
        for name, choices in CHOICE_FIELDS.items():
            if getattr(self, name) not in choices:
                raise ValueError(f'FusedBiConfig.{name} must be one of {", ".join(choices)} '
                                 f'(got {getattr(self, name)!r})')
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in CHOICE_FIELDS or f.name == 'segments' and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'FusedBiConfig.{f.name} must be an int >= 1'
                                 f'{" or None" if f.name == "segments" else ""} (got {value!r})')
        for name in ('fwd_warps', 'bwd_warps', 'scan_group', 'scan_block'):
            value = getattr(self, name)
            if value & (value - 1):
                raise ValueError(f'FusedBiConfig.{name} must be a power of 2 (got {value})')

    def runs_chunked(self, heads, tokens, per_direction=False):
        """Whether a call on ``heads`` (batch x heads) sequences of ``tokens`` tokens runs the
        chunked form. ``per_direction``: each scan direction has its own q and k (rotary
        positions), which only the chunked form reads (its programs load each direction's own;
        a sweep program needs both directions' q and k), so it runs chunked at
        every shape unless the sweep is forced, which is an error."""
        if per_direction:
            if not self.allows_chunked():
                raise ValueError("fused bi-scan: per-direction q, k (qb / kb) run in the "
                                 "chunked form only; this FusedBiConfig forces the sweep "
                                 f"(form={self.form!r}, segments={self.segments!r})")
            return True
        if self.form != 'auto':
            return self.form == 'chunked'
        if self.segments is not None:      # a forced segment count is the sweep's
            return False
        return heads <= self.chunked_max_heads and tokens >= self.chunked_min_tokens

    def allows_chunked(self):
        """False where the config forces the sweep (``form='sweep'``, or segments forced
        under 'auto')."""
        return self.form == 'chunked' or self.form == 'auto' and self.segments is None

    @classmethod
    def from_dict(cls, options):
        """A config from a dict of field values (e.g. parsed JSON); the other fields keep their
        defaults. Unknown keys are an error that names the valid ones."""
        unknown = sorted(set(options) - set(FIELD_NAMES))
        if unknown:
            raise ValueError(f'FusedBiConfig: unknown key(s) {", ".join(map(str, unknown))}; '
                             f'valid: {", ".join(FIELD_NAMES)}')
        return cls(**options)

    @classmethod
    def coerce(cls, config):
        """None (the default config), a dict (:meth:`from_dict`) or a FusedBiConfig."""
        if config is None:
            return DEFAULT_CONFIG
        if isinstance(config, cls):
            return config
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        raise TypeError(f'FusedBiConfig, dict or None expected, got {type(config).__name__}')

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_op_args(self):
        """The config as the custom ops (``op.py``) take it, in types a schema has:
        ``segments`` (an int or None) and the other fields as an int list
        (:data:`OP_COUNT_FIELDS` order; ``form`` as its index in :data:`FORMS`).
        :meth:`from_op_args` is the inverse."""
        return self.segments, [CHOICE_FIELDS[name].index(getattr(self, name))
                               if name in CHOICE_FIELDS else getattr(self, name)
                               for name in OP_COUNT_FIELDS]

    @classmethod
    def from_op_args(cls, segments, counts):
        fields = dict(zip(OP_COUNT_FIELDS, counts, strict=True))
        for name, choices in CHOICE_FIELDS.items():
            fields[name] = choices[fields[name]]
        return cls(segments=segments, **fields)


# the kernel forms, by their index in the custom ops' int list
FORMS = ('sweep', 'chunked', 'auto')
CHOICE_FIELDS = dict(form=FORMS)


DEFAULT_CONFIG = FusedBiConfig()
# (module constants, not dataclasses.fields calls, where torch.compile traces: a dict config
# inside a compiled region is read without a graph break)
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(FusedBiConfig))
# the fields after ``segments`` (ints >= 1, the choices by index): FusedBiConfig.to_op_args
OP_COUNT_FIELDS = tuple(name for name in FIELD_NAMES if name != 'segments')
