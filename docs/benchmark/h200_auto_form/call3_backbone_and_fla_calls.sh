# session call 3: the rest of the backbone table; compile through fla_forward against graph breaks
. .gpu/env.sh || exit 1
B="python tools/benchmark.py"
timeout 250 $B backbone --backbones FLAPyramid --arch tiny --families gla simple_gla retnet --scans bi --no-twin --baselines swin convnext --compile default --fla-compile default --backbone-cuda-graph only --cuda-graph --profile-steps 3 --resolutions 512 1024 --batch-size 2 --mode fwdbwd --dtype bf16 --iters 10 --warmup 3 --case-budget 5 --no-plots --size-order asc --out work_dirs/bb --resume > $OUT/bb_resume.txt 2>&1
cp -r work_dirs/bb $OUT/
grep "^\[" $OUT/bb_resume.txt | tail -12
C="backbone --backbones FLAPyramid --arch tiny --families delta_net --scans bi --no-twin --baselines --resolutions 512 --batch-size 2 --mode fwdbwd --dtype bf16 --iters 10 --warmup 3 --case-budget 5 --no-plots --profile-steps 3"
timeout 150 $B $C --compile none default --out $OUT/calls_new > $OUT/calls_new.txt 2>&1
cp fla_mm/ops/families.py /tmp/families_new.py; cp .gpu/families_breaks.py fla_mm/ops/families.py
timeout 120 $B $C --compile default --out $OUT/calls_breaks > $OUT/calls_breaks.txt 2>&1
cp /tmp/families_new.py fla_mm/ops/families.py
grep "^\[" $OUT/calls_*.txt
