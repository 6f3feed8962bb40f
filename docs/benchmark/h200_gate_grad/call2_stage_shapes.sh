# session call 2: both forms at FLAPyramid-T's stage shapes (B=2, B=8), then B=8 H=6 d=64 against SDPA
. .gpu/env.sh || exit 1
B="python tools/benchmark.py"
S="mixer --op-shapes backbone --op-backbones FLAPyramid:tiny --families gla simple_gla retnet --fused-forms sweep chunked --op-rows fused --mode fwdbwd --dtype bf16 --cuda-graph --iters 10 --warmup 3 --case-budget 4 --no-plots"
timeout 190 $B $S --batch-size 2 --out work_dirs/stage2 > $OUT/stage2.txt 2>&1
cp work_dirs/stage2/results.md $OUT/stage_b2.md; cp work_dirs/stage2/results.json $OUT/stage_b2.json
timeout 190 $B $S --batch-size 8 --out work_dirs/stage8 > $OUT/stage8.txt 2>&1
cp work_dirs/stage8/results.md $OUT/stage_b8.md; cp work_dirs/stage8/results.json $OUT/stage_b8.json
timeout 170 $B mixer --levels op --op-rows fused --families gla simple_gla retnet --tokens 1024 4096 16384 --heads 6 --head-dim 64 --batch-size 8 --mode fwdbwd --dtype bf16 --cuda-graph --iters 10 --warmup 3 --case-budget 4 --no-plots --out work_dirs/qkv8 > $OUT/qkv8.txt 2>&1
cp work_dirs/qkv8/results.md $OUT/qkv_b8.md; cp work_dirs/qkv8/results.json $OUT/qkv_b8.json
ls work_dirs/*; tail -3 $OUT/stage2.txt $OUT/stage8.txt $OUT/qkv8.txt
