# session call 1: rotary in the kernels against the references and the two-call path (every
# length, fp32 and bf16), the mixers fused vs two-call; then the backbone step at 1024², B=2,
# RetNet on the fast path against Swin-T and ConvNeXt-T, each at its fastest
. .gpu/env.sh || exit 1
P="python -m pytest -q -p no:cacheprovider -W ignore -rfEx --tb=short"
export FLA_MM_GPU_TABLE=$OUT/table_rot.txt
timeout -s INT 200 $P -n 6 tests/test_gpu_fused_bi.py -k "rotary_in_the_kernels or mixer_trains" > $OUT/t_rot.txt 2>&1
tail -4 $OUT/t_rot.txt; cat $OUT/table_rot.txt | sort | head -40
timeout -s INT 370 python tools/benchmark.py backbone --backbones FLAPyramid --arch tiny --families retnet --scans bi --no-twin --baselines swin convnext --compile default --fla-compile default --backbone-cuda-graph only --cuda-graph --profile-steps 3 --resolutions 1024 --batch-size 2 --mode fwdbwd --dtype bf16 --iters 10 --warmup 3 --case-budget 5 --no-plots --out work_dirs/bb1024 > $OUT/bb1024.txt 2>&1
cp work_dirs/bb1024/results.md $OUT/bb1024.md; cp work_dirs/bb1024/results.json $OUT/bb1024.json
grep "^\[" $OUT/bb1024.txt | tail -12
