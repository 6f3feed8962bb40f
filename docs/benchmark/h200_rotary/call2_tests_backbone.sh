# session call 2: the compile tests that call 1's time limit cut off (their failures), the
# per-direction GLA cases left, then the backbone step at 1024², B=2, with RetNet's rotary
# bi-scan on the fused op, against Swin-T and ConvNeXt-T, each at its fastest
. .gpu/env.sh || exit 1
P="python -m pytest -q -p no:cacheprovider -W ignore -rfEx --tb=short"
export FLA_MM_GPU_TABLE=$OUT/table2_compile.txt
timeout -s INT 170 $P -n 3 tests/test_gpu_compile.py -k "cold or pyramid or trains_as_eager and (rwkv7 or vig_gla or gated)" > $OUT/t2_compile.txt 2>&1 &
export FLA_MM_GPU_TABLE=$OUT/table2_qkb.txt
timeout -s INT 170 $P -n 3 tests/test_gpu_fused_bi.py -k "per_direction and separate-gla and bf16 or mixer_trains and gla" > $OUT/t2_qkb.txt 2>&1 &
wait
tail -3 $OUT/t2_qkb.txt; grep -E "^(FAILED|ERROR|[0-9]+ (passed|failed))|Error" $OUT/t2_compile.txt | head -20
timeout -s INT 390 python tools/benchmark.py backbone --backbones FLAPyramid --arch tiny --families retnet --scans bi --no-twin --baselines swin convnext --compile default --fla-compile default --backbone-cuda-graph only --cuda-graph --profile-steps 3 --resolutions 1024 --batch-size 2 --mode fwdbwd --dtype bf16 --iters 10 --warmup 3 --case-budget 5 --no-plots --out work_dirs/bb1024 > $OUT/bb1024.txt 2>&1
cp work_dirs/bb1024/results.md $OUT/bb1024.md; cp work_dirs/bb1024/results.json $OUT/bb1024.json
grep "^\[" $OUT/bb1024.txt | tail -12
