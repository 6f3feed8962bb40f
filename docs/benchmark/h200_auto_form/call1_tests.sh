# session call 1: GPU tests of the uncommitted changes (fla_calls, two-level gate-gradient scan)
. .gpu/env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
P="python -m pytest -q -p no:cacheprovider -W ignore -rfEx"
timeout 430 $P -n 3 tests/test_gpu_compile.py > $OUT/t_compile.txt 2>&1 &
timeout 430 $P -n 4 tests/test_gpu_ops.py > $OUT/t_ops.txt 2>&1 &
timeout 430 $P -n 6 tests/test_gpu_fused_bi.py -k "chunked and not constant and not 65536" > $OUT/t_chunked.txt 2>&1 &
wait
timeout 120 $P -n 6 tests/test_gpu_fused_bi.py -k "chunked and not constant and 65536" > $OUT/t_chunked65k.txt 2>&1
for f in $OUT/t_*.txt; do echo "== $f"; tail -4 $f; done
