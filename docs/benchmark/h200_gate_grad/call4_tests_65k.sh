# session call 4: the remaining 65,536-token chunked cases (B*H 1, and RetNet's constant gates)
. .gpu/env.sh || exit 1
export FLA_MM_GPU_TABLE=$OUT/table.txt
timeout 230 python -m pytest -q -p no:cacheprovider -W ignore -rfEx -n 4 tests/test_gpu_fused_bi.py -k "chunked and ((65536 and BH1) or (65536 and constant))"
