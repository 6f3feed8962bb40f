# session call 3: whole backbone step at 1024², B=2, each model at its fastest (captured)
. .gpu/env.sh || exit 1
timeout 560 python tools/benchmark.py backbone --backbones FLAPyramid --arch tiny --families gla simple_gla retnet --scans bi --no-twin --baselines swin convnext --compile default --fla-compile default --backbone-cuda-graph only --cuda-graph --profile-steps 3 --resolutions 1024 --batch-size 2 --mode fwdbwd --dtype bf16 --iters 10 --warmup 3 --case-budget 5 --no-plots --out work_dirs/bb1024 > $OUT/bb1024.txt 2>&1
cp work_dirs/bb1024/results.md $OUT/bb1024.md; cp work_dirs/bb1024/results.json $OUT/bb1024.json
grep "^\[" $OUT/bb1024.txt | tail -12
