# session call 1: exactness of the chunked form (gate gradient summed in the kernels) on the GPU
. .gpu/env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import torch, triton, fla; print(torch.__version__, triton.__version__, fla.__version__)"
P="python -m pytest -q -p no:cacheprovider -W ignore -rfEx"
export FLA_MM_GPU_TABLE=$OUT/table_chunked.txt
timeout 400 $P -n 8 tests/test_gpu_fused_bi.py -k "chunked and not 65536" > $OUT/t_chunked.txt 2>&1
tail -5 $OUT/t_chunked.txt
export FLA_MM_GPU_TABLE=$OUT/table_65k.txt
timeout 170 $P -n 2 tests/test_gpu_fused_bi.py -k "chunked and 65536 and not constant and not BH1" > $OUT/t_chunked65k.txt 2>&1
tail -5 $OUT/t_chunked65k.txt
