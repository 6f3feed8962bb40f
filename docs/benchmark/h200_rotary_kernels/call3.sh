# session call 3: the op alone again (call 2's script compared accumulated gradients), the
# cold-cache compile tests (their PYTHONPATH fix), GLA's per-direction bf16 cases, and the
# chunked form at 3136 and 16384 tokens
. .gpu/env.sh || exit 1
P="python -m pytest -q -p no:cacheprovider -W ignore -rfEx --tb=short"
timeout -s INT 100 python docs/benchmark/h200_rotary_kernels/op_rotary.py > $OUT/op_rotary.txt 2>&1; grep "^L=" $OUT/op_rotary.txt
export FLA_MM_GPU_TABLE=$OUT/table3_compile.txt
timeout -s INT 330 $P -n 2 tests/test_gpu_compile.py -k "cold" > $OUT/t3_compile.txt 2>&1 &
export FLA_MM_GPU_TABLE=$OUT/table3_fused.txt
timeout -s INT 330 $P -n 8 tests/test_gpu_fused_bi.py -k "per_direction and separate-gla and bf16 or chunked_form and (3136 or 16384)" > $OUT/t3_fused.txt 2>&1 &
wait
tail -3 $OUT/t3_compile.txt; tail -3 $OUT/t3_fused.txt; cat $OUT/table3_compile.txt; sort $OUT/table3_fused.txt
