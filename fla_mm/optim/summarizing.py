"""MMEngine's default optimizer wrapper constructor with a one-line log.

``DefaultOptimWrapperConstructor`` logs every setting of every parameter that a
``paramwise_cfg`` rule touches ("paramwise_options -- backbone.stages.0...norm1.weight:
weight_decay=0.0", three lines per norm parameter with ``custom_keys=dict(norm=...)``),
some 60 lines for the smallest fla_mm model. This subclass builds exactly the same param
groups and logs one summary line instead.
"""
import logging
from collections import Counter

from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor

PER_PARAMETER_PREFIX = 'paramwise_options -- '


class _DropPerParameterLines(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith(PER_PARAMETER_PREFIX)


def summarize_param_groups(groups):
    """'95 parameter tensors: 40 with weight_decay=0.0, decay_mult=0.0; 55 with the
    optimizer's defaults' for the groups of ``add_params``."""
    settings = Counter()
    tensors = 0
    for group in groups:
        options = ', '.join(f'{k}={v}' for k, v in group.items() if k != 'params')
        settings[options] += len(group['params'])
        tensors += len(group['params'])
    parts = [f'{n} with {options or "the optimizer defaults"}'
             for options, n in sorted(settings.items(), key=lambda kv: (-kv[1], kv[0]))]
    return f'{tensors} parameter tensors: {"; ".join(parts)}'


class SummarizingOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` (same groups, same ``paramwise_cfg`` rules) that
    logs one summary line instead of one line per parameter and setting.

    Config: ``optim_wrapper = dict(..., constructor='SummarizingOptimWrapperConstructor')``.
    """

    def add_params(self, params, module, prefix='', is_dcn_module=None):
        if prefix:     # the recursion into a child module: the top call filters and sums up
            return super().add_params(params, module, prefix, is_dcn_module)
        logger = MMLogger.get_current_instance()
        quiet = _DropPerParameterLines()
        logger.addFilter(quiet)
        first = len(params)
        try:
            super().add_params(params, module, prefix, is_dcn_module)
        finally:
            logger.removeFilter(quiet)
        print_log(f'paramwise_cfg {dict(self.paramwise_cfg)}: '
                  f'{summarize_param_groups(params[first:])}', logger='current')
