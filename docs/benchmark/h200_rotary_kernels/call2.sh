# session call 2: the backbone rows at 512², the op alone at the stage shapes (rotary in
# the kernels vs rotated pairs in PyTorch), then the GLA mixer case call 1 cut off
. .gpu/env.sh || exit 1
P="python -m pytest -q -p no:cacheprovider -W ignore -rfEx --tb=short"
timeout -s INT 300 python tools/benchmark.py backbone --backbones FLAPyramid --arch tiny --families retnet --scans bi --no-twin --baselines swin convnext --compile default --fla-compile default --backbone-cuda-graph only --cuda-graph --profile-steps 3 --resolutions 512 --batch-size 2 --mode fwdbwd --dtype bf16 --iters 10 --warmup 3 --case-budget 5 --no-plots --out work_dirs/bb512 > $OUT/bb512.txt 2>&1
cp work_dirs/bb512/results.md $OUT/bb512.md; cp work_dirs/bb512/results.json $OUT/bb512.json
grep "^\[" $OUT/bb512.txt | tail -5
timeout -s INT 150 python docs/benchmark/h200_rotary_kernels/op_rotary.py > $OUT/op_rotary.txt 2>&1; cat $OUT/op_rotary.txt | grep "^L="
export FLA_MM_GPU_TABLE=$OUT/table2_mixer.txt
timeout -s INT 120 $P tests/test_gpu_fused_bi.py -k "mixer_trains and gla" > $OUT/t2_mixer.txt 2>&1; tail -3 $OUT/t2_mixer.txt
