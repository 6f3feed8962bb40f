# session call 1: RetNet's rotary bi-scan in the fused op (per-direction q, k), exactness and
# compile on the GPU
. .gpu/env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import torch, triton, fla; print(torch.__version__, triton.__version__, fla.__version__)"
P="python -m pytest -q -p no:cacheprovider -W ignore -rfEx"
export FLA_MM_GPU_TABLE=$OUT/table_qkb.txt
timeout 230 $P -n 6 tests/test_gpu_fused_bi.py -k "per_direction or mixer_trains" > $OUT/t_qkb.txt 2>&1
tail -4 $OUT/t_qkb.txt
export FLA_MM_GPU_TABLE=$OUT/table_compile.txt
timeout 330 $P -n 6 tests/test_gpu_compile.py tests/test_gpu_fast_path.py > $OUT/t_compile.txt 2>&1
tail -6 $OUT/t_compile.txt
