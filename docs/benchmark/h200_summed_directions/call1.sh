# session call 1: the chunked kernels' A/B at FLAPyramid-T's stage shapes (old: HEAD's
# per-direction programs; v1 / rolled: one program per chunk summing both directions), then
# the chunked-form GPU tests of the scalar decays on v1
. .gpu/env.sh || exit 1
timeout -s INT 300 python .gpu/ab/ab.py 1024 512 > $OUT/ab.txt 2>&1; grep "^==" $OUT/ab.txt; tail -3 $OUT/ab.txt
export FLA_MM_GPU_TABLE=$OUT/table1_chunked.txt
timeout -s INT 220 python -m pytest -q -p no:cacheprovider -W ignore -rfEx --tb=short -n 8 tests/test_gpu_fused_bi.py -k "chunked and not gla and not 65536" > $OUT/t1_chunked.txt 2>&1; tail -3 $OUT/t1_chunked.txt
