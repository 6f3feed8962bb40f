# session call 2: stage-shape forms (sweep vs chunked, all three families), then the backbone table
. .gpu/env.sh || exit 1
B="python tools/benchmark.py"
timeout 200 $B mixer --op-shapes backbone --op-backbones FLAPyramid:tiny --families gla simple_gla retnet --fused-forms sweep chunked --op-rows fused --batch-size 2 --mode fwdbwd --dtype bf16 --cuda-graph --iters 10 --warmup 3 --case-budget 4 --no-plots --out work_dirs/stage > $OUT/stage.txt 2>&1
cp -r work_dirs/stage $OUT/
grep -E "^\[|stage" $OUT/stage.txt | tail -5
timeout 350 $B backbone --backbones FLAPyramid --arch tiny --families gla simple_gla retnet --scans bi --no-twin --baselines swin convnext --compile default --fla-compile default --backbone-cuda-graph only --cuda-graph --profile-steps 3 --resolutions 512 1024 --batch-size 2 --mode fwdbwd --dtype bf16 --iters 10 --warmup 3 --case-budget 5 --no-plots --size-order asc --out work_dirs/bb > $OUT/bb.txt 2>&1
cp -r work_dirs/bb $OUT/
grep "^\[" $OUT/bb.txt | tail -12
