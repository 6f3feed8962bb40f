# session call 3: the chunked form's short-length exactness cases (L 1-196, every gate form,
# B*H 1, 6, 48), then the backbone step at 512², B=2: RetNet's rotary bi-scan on the fused op
# against Swin-T and ConvNeXt-T, each at its fastest
. .gpu/env.sh || exit 1
export FLA_MM_GPU_TABLE=$OUT/table3_chunked_short.txt
timeout -s INT 230 python -m pytest -q -p no:cacheprovider -W ignore -rfEx --tb=short -n 8 tests/test_gpu_fused_bi.py -k "chunked and not 65536 and not 3136 and not 16384" > $OUT/t3_chunked_short.txt 2>&1
tail -3 $OUT/t3_chunked_short.txt
timeout -s INT 320 python tools/benchmark.py backbone --backbones FLAPyramid --arch tiny --families retnet --scans bi --no-twin --baselines swin convnext --compile default --fla-compile default --backbone-cuda-graph only --cuda-graph --profile-steps 3 --resolutions 512 --batch-size 2 --mode fwdbwd --dtype bf16 --iters 10 --warmup 3 --case-budget 5 --no-plots --out work_dirs/bb512 > $OUT/bb512.txt 2>&1
cp work_dirs/bb512/results.md $OUT/bb512.md; cp work_dirs/bb512/results.json $OUT/bb512.json
grep "^\[" $OUT/bb512.txt | tail -6
