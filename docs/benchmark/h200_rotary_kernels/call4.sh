# session call 4: GLA's per-direction bf16 cases that calls 3 (and the last session) did not reach
. .gpu/env.sh; export FLA_MM_GPU_TABLE=$OUT/table4_qkb.txt; timeout -s INT 330 python -m pytest -q -p no:cacheprovider -W ignore -rfEx --tb=short tests/test_gpu_fused_bi.py -k "per_direction and separate-gla and bf16" > $OUT/t4_qkb.txt 2>&1; tail -3 $OUT/t4_qkb.txt; sort $OUT/table4_qkb.txt
