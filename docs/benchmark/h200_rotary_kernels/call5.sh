# session call 5: the kernels read cos and sin from a table (ops.rotary_table) instead of
# computing them: the op alone at the stage shapes again (and fp32 agreement), then the fp32
# rotary cases of the GPU tests
. .gpu/env.sh || exit 1
timeout -s INT 80 python docs/benchmark/h200_rotary_kernels/op_rotary.py > $OUT/op_rotary_table.txt 2>&1; grep "^L=" $OUT/op_rotary_table.txt | cut -c1-80
export FLA_MM_GPU_TABLE=$OUT/table5_rot.txt
timeout -s INT 85 python -m pytest -q -p no:cacheprovider -W ignore -rfEx --tb=short -n 8 tests/test_gpu_fused_bi.py -k "rotary_in_the_kernels and fp32" > $OUT/t5_rot.txt 2>&1; tail -2 $OUT/t5_rot.txt; sort $OUT/table5_rot.txt
