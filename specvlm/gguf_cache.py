"""Loading any GGUF file through a float32 plain copy kept in $SPECVLM_CACHE/gguf (dequantised once, then seconds)."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .errors import ModelLoadError
from .notices import first_use, transformers_bars
from .options import cache_root

if TYPE_CHECKING:
    from .options import LoadOptions

_MIB = 1 << 20
_COPY_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_FIX = "re-download it, or re-assemble it if it was built from parts (e.g. `assemble(overwrite=True)`), and try again"


class _Damaged(Exception):
    """Internal: the header walk found the file cut off or inconsistent (the text says where)."""


def _stat(gguf: Path) -> os.stat_result:
    """The file's stat, or a ModelLoadError for a missing path, a folder, or an unreadable file."""
    try:
        st = gguf.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"GGUF file not found: {gguf} (check the path, or download / assemble it first)") from None
    except OSError as err:
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {err.strerror or err}") from None
    if not gguf.is_file():
        raise ModelLoadError(f"not a GGUF file but a folder or device: {gguf} (give the path of the .gguf file)")
    return st


def plain_copy_folder(gguf: Path) -> Path:
    """Where the dequantised float32 copy of this GGUF lives: $SPECVLM_CACHE/gguf/<stem>-<key>, key from the file's
    size + mtime + a hash of its first and last MiB."""
    gguf = Path(gguf).expanduser()
    st = _stat(gguf)
    digest = hashlib.blake2b(f"{st.st_size}:{st.st_mtime_ns}".encode(), digest_size=8)
    try:
        with gguf.open("rb") as f:
            digest.update(f.read(_MIB))
            if st.st_size > _MIB:
                f.seek(max(_MIB, st.st_size - _MIB))
                digest.update(f.read(_MIB))
    except OSError as err:
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {err.strerror or err}") from None
    return cache_root() / "gguf" / f"{gguf.stem}-{digest.hexdigest()}"


class _Header:
    """A bounds-checked cursor over the file's bytes, in the byte order its version field shows."""

    def __init__(self, buf: mmap.mmap, order: str):
        self.buf, self.order, self.pos = buf, order, 4

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise _Damaged(f"it ends at byte {len(self.buf)}, inside its header")
        self.pos = start + n
        return start

    def unpack(self, fmt: str) -> int:
        return struct.unpack_from(self.order + fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        n = self.unpack("Q")
        start = self.take(n)
        return bytes(self.buf[start : start + n])

    def skip_string(self) -> None:
        self.take(self.unpack("Q"))

    def value(self, kind: int) -> int | None:
        """Read a uint32 (the one type whose value is needed, for general.alignment); skip any other value."""
        if kind == _UINT32:
            return self.unpack("I")
        if kind in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[kind])
        elif kind == _STRING:
            self.skip_string()
        elif kind == _ARRAY:
            inner, count = self.unpack("I"), self.unpack("Q")
            least = _SCALAR_SIZES.get(inner, 8 if inner == _STRING else 12)  # bytes per item, at the least
            if count * least > len(self.buf) - self.pos:
                raise _Damaged(f"it ends at byte {len(self.buf)}, inside its header (an array claims {count} items)")
            if inner in _SCALAR_SIZES:
                self.take(_SCALAR_SIZES[inner] * count)
            else:
                for _ in range(count):
                    self.value(inner)
        else:
            raise _Damaged(f"unknown value type {kind} at byte {self.pos - 4}")
        return None


def _tensor_data_end(head: _Header) -> int:
    """Walk the header (metadata, then tensor infos) and return the byte where the last tensor's data ends."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    version = head.unpack("I")
    if version & 0xFFFF == 0:  # a big-endian file
        head.order, head.pos = ">", 4
        version = head.unpack("I")
    if version == 1:
        raise ModelLoadError("GGUF version 1 is not supported: convert the model again with a recent llama.cpp")
    if version not in (2, 3):
        raise _Damaged(f"unknown GGUF version {version}")
    n_tensors, n_kv = head.unpack("Q"), head.unpack("Q")
    if max(n_tensors, n_kv) > len(head.buf):
        raise _Damaged(f"its header claims {n_tensors} tensors and {n_kv} metadata entries")
    alignment = 32
    for _ in range(n_kv):
        key, kind = head.string(), head.unpack("I")
        found = head.value(kind)
        if key == b"general.alignment" and found:
            alignment = found
    infos: list[tuple[int, int]] = []  # (offset, bytes) per tensor
    for _ in range(n_tensors):
        head.skip_string()
        n_dims = head.unpack("I")
        if n_dims > 8:
            raise _Damaged(f"a tensor claims {n_dims} dimensions")
        elements = 1
        for _ in range(n_dims):
            elements *= head.unpack("Q")
        kind, offset = head.unpack("I"), head.unpack("Q")
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise _Damaged(f"unknown tensor type {kind}") from None
        infos.append((offset, elements // block * size))
    data_start = -(-head.pos // alignment) * alignment
    return max((data_start + offset + nbytes for offset, nbytes in infos), default=data_start)


def check_gguf(gguf: Path) -> None:
    """Raise one ModelLoadError unless the file starts with the GGUF magic, has a readable header and holds all the
    tensor bytes its header announces (a walk of the header: well under a second, no tensor is read)."""
    gguf = Path(gguf).expanduser()
    size = _stat(gguf).st_size
    try:
        if size == 0:
            raise _Damaged("it is empty")
        with gguf.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise _Damaged("it does not start with the GGUF magic bytes")
            try:
                end = _tensor_data_end(_Header(buf, "<"))
            except ImportError:
                raise ModelLoadError("reading GGUF files needs the gguf package: run `pip install gguf`") from None
        if end > size:
            raise _Damaged(f"it has {size} bytes but its tensors need {end}: the file is cut off")
    except _Damaged as err:
        raise ModelLoadError(f"GGUF file {gguf} is damaged or not a GGUF file ({err}); {_FIX}") from None
    except OSError as err:
        if isinstance(err, ModelLoadError):
            raise
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {err.strerror or err}") from None


def write_plain_copy(model: PreTrainedModel, tok: Any, folder: Path) -> bool:
    """Write the model as a plain HF folder (config + safetensors + tokenizer) via a temporary folder and a rename.
    Returns False, leaving nothing behind, when the cache cannot be written (read-only, full) or another process won."""
    tmp: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        tmp.rename(folder)
        tmp = None
        return True
    except OSError:
        return False
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _from_gguf(gguf: Path, **kwargs: Any) -> PreTrainedModel:
    """A dense model from the GGUF: where transformers could keep the weights in packed GGUF blocks (its `GgufConfig`
    path, with the `kernels` package), ask it to dequantise, so the model can be saved as plain safetensors."""
    try:
        from transformers import GgufConfig
    except ImportError:  # an older transformers: it always dequantises
        extra: dict[str, Any] = {}
    else:
        extra = {"quantization_config": GgufConfig(dequantize=True)}
    with transformers_bars():
        return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **extra, **kwargs)


def load_gguf(gguf: Path, opts: LoadOptions) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer) from a GGUF file: from the cached plain copy when it exists, else dequantise once
    (transformers gguf_file=), write the copy atomically (tmp folder + rename; a read-only cache is not an error),
    and return the model placed per opts."""
    gguf = Path(gguf).expanduser().absolute()
    copy = plain_copy_folder(gguf)
    if all((copy / name).is_file() for name in _COPY_FILES):
        try:
            tok = AutoTokenizer.from_pretrained(copy)
            model = AutoModelForCausalLM.from_pretrained(copy, **opts.kwargs())
        except (OSError, ValueError, safetensors.SafetensorError) as err:
            raise ModelLoadError(
                f"cannot load the cached float32 copy of {gguf.name} in {copy}: {_first_line(err)} "
                "(delete that folder to rebuild it from the GGUF)"
            ) from err
        return opts.place(model), tok
    check_gguf(gguf)
    first_use(f"converting {gguf.name} from GGUF to float32", copy)
    try:
        with transformers_bars():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = _from_gguf(gguf, dtype=torch.float32)
        written = write_plain_copy(model, tok, copy)
        if opts.dtype != torch.float32 or opts.device_map is not None:
            kwargs = opts.kwargs()
            model = AutoModelForCausalLM.from_pretrained(copy, **kwargs) if written else _from_gguf(gguf, **kwargs)
    except ImportError as err:
        raise ModelLoadError(f"loading GGUF files needs the gguf package: run `pip install gguf` ({err})") from err
    except (OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError, NotImplementedError) as err:
        if isinstance(err, ModelLoadError):
            raise
        raise ModelLoadError(
            f"cannot load GGUF file {gguf}: {_first_line(err)} "
            "(an architecture transformers cannot read from GGUF, or damaged data: try a plain HF folder, "
            f"or {_FIX})"
        ) from err
    return opts.place(model), tok
