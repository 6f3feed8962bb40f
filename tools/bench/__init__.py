"""tools/benchmark.py's code, one module per concern: ``cli`` (arguments, the run loop),
``timing`` (measuring one case), ``models`` (fla_mm's backbone classes, the stages of one, the
fused bi-scan config for its mixers, which every level uses), ``level_mixer`` /
``level_backbone`` / ``level_model`` (the cases of each level), ``report`` (tables, plots,
results.json) and ``compile`` (cold compile of the fused bi-scan kernels). Named ``bench``
rather than ``benchmark``: a package ``tools/benchmark/`` beside the script
``tools/benchmark.py`` would take the name ``benchmark`` from it on ``import benchmark``."""
