"""Dictionaries from outside the run, scored beside its own (`evaluate --external NAME=PATH`).

PATH is one of:

- a SAELens folder (cfg.json + sae_weights.safetensors, SAELens 6's `save_model` layout, the
  one `sae --export saelens` writes), read here with safetensors alone (no sae-lens import).
  Its own encoder gives the codes:

      x'  = x - b_dec if apply_b_dec_to_input else x
      pre = x' W_enc + b_enc                      W_enc [d_in, d_sae], b_enc [d_sae]
      standard:  z = relu(pre)
      topk:      z = relu of the k largest pre (cfg `k`), 0 elsewhere
      jumprelu:  z = relu(pre) * (pre > threshold)          threshold [d_sae]
      h^ = z W_dec + b_dec                        W_dec [d_sae, d_in], b_dec [d_in]

  SAELens saves a trained BatchTopK or Matryoshka BatchTopK SAE for inference as "jumprelu",
  its running threshold copied to every latent (`process_state_dict_for_saving_inference`);
  a training checkpoint's "batchtopk" / "matryoshka_batchtopk" cfg is read the same way, from
  its `threshold` [d_sae] or scalar `topk_threshold` tensor.

- a safetensors file holding a bare decoder [n_atoms, d] under `W_dec` or `components` (and
  optionally `b_dec` [d]): the rows are scaled to unit norm and each row is coded as the
  oracle is (evaluate/oracle.py: nonnegative OMP with at most k atoms, k the stage's).

Every refusal is an `ExternalDictionaryError` (a StageInputError) whose one-line message
starts with the file it is about. The loaded objects have `components_`, `transform` and
`inverse_transform` (numpy in, numpy out) like the stage's estimators, so the scoring code
takes them unchanged. Nothing here reads the run.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unsuperpose.data import files
from unsuperpose.data.errors import StageInputError

EXTERNAL_PREFIX = "ext:"
"""An external dictionary's method name in metrics, tables and figures: ext:NAME."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STANDARD, TOPK, JUMPRELU = "standard", "topk", "jumprelu"
# cfg.json architecture -> how it is encoded here
ARCHITECTURES = {"standard": STANDARD, "topk": TOPK, "jumprelu": JUMPRELU,
                 "batchtopk": JUMPRELU, "matryoshka_batchtopk": JUMPRELU,
                 "matryoshka": JUMPRELU}
DECODER_KEYS = ("W_dec", files.COMPONENTS)
NO_NORMALIZATION = (None, "none")
_CHUNK = 16384  # rows per encode, to bound [rows, d_sae] temporaries


class ExternalDictionaryError(StageInputError):
    """An external dictionary that cannot be read or does not fit the run; the message names
    the file."""


def method_name(name: str) -> str:
    return EXTERNAL_PREFIX + name


def is_external(method: str | None) -> bool:
    return bool(method) and method.startswith(EXTERNAL_PREFIX)


def check_name(name) -> str | None:
    """None when `name` is a valid NAME of --external NAME=PATH, else why not."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        return (f"name {name!r} must start with a letter or digit and hold only letters, "
                f"digits, '_', '.', '-'")
    return None


def parse_spec(text: str) -> tuple[str, str]:
    """'NAME=PATH' -> (NAME, PATH); ValueError naming what is wrong."""
    name, sep, path = str(text).partition("=")
    if not sep or not path.strip():
        raise ValueError(f"{text!r}: expected NAME=PATH")
    reason = check_name(name.strip())
    if reason is not None:
        raise ValueError(f"{text!r}: {reason}")
    return name.strip(), path.strip()


# ---- the dictionaries ----------------------------------------------------------------------
@dataclass
class _External:
    """What every external dictionary records: its name, where it came from, and the sha256
    of each file read."""

    name: str
    path: Path
    kind: str                                      # "saelens" or "decoder"
    description: str                               # one line for the report
    sha256: dict[str, str] = field(default_factory=dict)   # file name -> sha256
    device: str = "cpu"

    @property
    def method(self) -> str:
        return method_name(self.name)

    @property
    def d(self) -> int:
        return int(self.components_.shape[1])

    def record(self) -> dict:
        """What evaluate's config.json keeps of it."""
        return {"path": str(self.path.resolve()), "kind": self.kind,
                "description": self.description, "sha256": dict(self.sha256)}


@dataclass
class SAELensDictionary(_External):
    """A SAELens SAE, encoded as SAELens does (module docstring). Tensors float32, torch."""

    architecture: str = STANDARD                   # one of STANDARD, TOPK, JUMPRELU
    W_enc: torch.Tensor | None = None              # [d, n]
    b_enc: torch.Tensor | None = None              # [n]
    W_dec: torch.Tensor | None = None              # [n, d]
    b_dec: torch.Tensor | None = None              # [d]
    threshold: torch.Tensor | None = None          # [n] (jumprelu)
    k: int | None = None                           # topk
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False     # topk: select on pre * ||W_dec,i||

    @property
    def components_(self) -> np.ndarray:
        return self.W_dec.numpy()

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.b_enc - self.b_dec @ self.W_enc if self.apply_b_dec_to_input else self.b_enc
        pre = torch.addmm(bias, x, self.W_enc)                          # [rows, n]
        if self.architecture == STANDARD:
            return pre.relu()
        if self.architecture == JUMPRELU:
            return pre.relu() * (pre > self.threshold)
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=1)
        values, indices = pre.topk(self.k, dim=-1)
        codes = torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        return codes / self.W_dec.norm(dim=1) if self.rescale_acts_by_decoder_norm else codes

    def transform(self, H) -> np.ndarray:
        """H [rows, d] -> codes [rows, n_atoms]."""
        X = torch.as_tensor(np.asarray(H, dtype=np.float32))
        if len(X) == 0:
            return np.zeros((0, len(self.W_dec)), np.float32)
        return torch.cat([self._encode(c) for c in X.split(_CHUNK)]).numpy()

    @torch.no_grad()
    def inverse_transform(self, codes) -> np.ndarray:
        """codes [rows, n_atoms] -> z W_dec + b_dec [rows, d]."""
        C = torch.as_tensor(np.asarray(codes, dtype=np.float32))
        return torch.addmm(self.b_dec, C, self.W_dec).numpy()


@dataclass
class DecoderDictionary(_External):
    """A bare decoder: unit atoms, rows coded by the oracle's nonnegative OMP at k atoms.

    The rows are kept as read and unit-normed where the oracle norms its own (in
    `oracle_codes`): normalising twice (float64, cast to float32, then again) moves about one
    element in 10^4 by one ulp, which can flip an OMP choice, so a decoder holding the true
    directions would not code rows exactly as the oracle does."""

    W_dec: np.ndarray | None = None                # [n_atoms, d] float32, as read
    b_dec: np.ndarray | None = None                # [d]
    k: int | None = None                           # set per instance: the stage's k

    @property
    def atoms(self) -> np.ndarray:
        """[n_atoms, d] the unit rows of W_dec (a zero row stays 0), float32."""
        from unsuperpose.evaluate.oracle import unit_rows

        return unit_rows(self.W_dec).astype(np.float32)

    @property
    def components_(self) -> np.ndarray:
        return self.atoms

    def with_k(self, k: int) -> "DecoderDictionary":
        import dataclasses

        return dataclasses.replace(self, k=int(k))

    def transform(self, H) -> np.ndarray:
        from unsuperpose.evaluate.oracle import oracle_codes

        if self.k is None:
            raise ValueError(f"{self.path}: a bare decoder needs the stage's k to code rows")
        H = np.asarray(H, dtype=np.float32)
        return oracle_codes(self.W_dec, H - self.b_dec, self.k)[1]

    def inverse_transform(self, codes) -> np.ndarray:
        # in torch, as oracle_codes reconstructs, so that the true directions give its H_hat
        C = torch.as_tensor(np.asarray(codes, dtype=np.float32))
        return (C @ torch.from_numpy(self.atoms)).numpy() + self.b_dec


# ---- reading ---------------------------------------------------------------------------------
def _fail(path: Path, message: str):
    raise ExternalDictionaryError(f"{path}: {message}")


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        _fail(path, "not found" if not path.exists() else "not a file")
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001  (any damage is one line naming the file)
        _fail(path, f"not a readable safetensors file ({_one_line(err)})")


def _tensor(path: Path, tensors: dict, key: str, shape: tuple[int, ...], what: str,
            needed: tuple[str, ...]) -> torch.Tensor:
    if key not in tensors:
        _fail(path, f"no tensor {key!r} ({what} needs {', '.join(needed)}; the file holds "
                    f"{', '.join(sorted(tensors)) or 'none'})")
    t = tensors[key]
    if tuple(t.shape) != shape:
        _fail(path, f"tensor {key!r} has shape {list(t.shape)}, expected {list(shape)}")
    if not t.is_floating_point():
        _fail(path, f"tensor {key!r} has dtype {t.dtype}, expected a float type")
    t = t.to(torch.float32).contiguous()
    if not torch.isfinite(t).all():
        _fail(path, f"tensor {key!r} holds NaN or inf")
    return t


def _positive_int(path: Path, cfg: dict, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(path, f"{key} must be an integer >= 1, got {value!r}")
    return value


def read_saelens(name: str, folder: Path) -> SAELensDictionary:
    cfg_path = folder / files.SAELENS_CFG_FILE
    weights_path = folder / files.SAELENS_WEIGHTS_FILE
    if not cfg_path.is_file():
        _fail(cfg_path, f"not found (a SAELens folder holds {files.SAELENS_CFG_FILE} and "
                        f"{files.SAELENS_WEIGHTS_FILE})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        _fail(cfg_path, f"not valid JSON ({_one_line(err)})")
    if not isinstance(cfg, dict):
        _fail(cfg_path, f"must hold a JSON object, got {type(cfg).__name__}")
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        _fail(cfg_path, f"architecture {arch!r} is not one this reads "
                        f"({', '.join(ARCHITECTURES)})")
    for key in ("normalize_activations", "reshape_activations"):
        if cfg.get(key) not in NO_NORMALIZATION:
            _fail(cfg_path, f"{key} {cfg[key]!r} is not supported (only none)")
    d, n = _positive_int(cfg_path, cfg, "d_in"), _positive_int(cfg_path, cfg, "d_sae")
    kind = ARCHITECTURES[arch]
    k = None
    if kind == TOPK:
        k = _positive_int(cfg_path, cfg, "k")
        if k > n:
            _fail(cfg_path, f"k = {k} exceeds d_sae = {n}")
    for key in ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm"):
        if key in cfg and not isinstance(cfg[key], bool):
            _fail(cfg_path, f"{key} must be true or false, got {cfg[key]!r}")
    tensors = _read_tensors(weights_path)
    needed = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if kind == JUMPRELU else ())
    what = f"a {arch} SAE"
    shapes = {"W_enc": (d, n), "b_enc": (n,), "W_dec": (n, d), "b_dec": (d,)}
    loaded = {key: _tensor(weights_path, tensors, key, shape, what, needed)
              for key, shape in shapes.items()}
    threshold = None
    if kind == JUMPRELU:
        if "threshold" not in tensors and "topk_threshold" in tensors:  # a batchtopk checkpoint
            shape = (1,) if tuple(tensors["topk_threshold"].shape) == (1,) else ()
            scalar = _tensor(weights_path, tensors, "topk_threshold", shape, what, needed)
            threshold = scalar.reshape(()).expand(n).contiguous()
        else:
            threshold = _tensor(weights_path, tensors, "threshold", (n,), what, needed)
    extra = []
    if kind == TOPK:
        extra.append(f"k = {k}")
    if arch != kind:
        extra.append("its threshold on every latent")
    description = (f"SAELens {arch} SAE ({', '.join(extra) + ', ' if extra else ''}d_in = {d}, "
                   f"d_sae = {n}), coded by its own encoder")
    return SAELensDictionary(
        name=name, path=folder, kind="saelens", description=description,
        sha256={p.name: files.sha256_file(p) for p in (cfg_path, weights_path)},
        architecture=kind, threshold=threshold, k=k,
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
        rescale_acts_by_decoder_norm=kind == TOPK and cfg.get("rescale_acts_by_decoder_norm", False),
        **loaded)


def read_decoder(name: str, path: Path) -> DecoderDictionary:
    tensors = _read_tensors(path)
    key = next((k for k in DECODER_KEYS if k in tensors), None)
    if key is None:
        _fail(path, f"no decoder tensor: expected {' or '.join(map(repr, DECODER_KEYS))} "
                    f"[n_atoms, d] (the file holds {', '.join(sorted(tensors)) or 'none'})")
    shape = tuple(tensors[key].shape)
    if len(shape) != 2 or 0 in shape:
        _fail(path, f"tensor {key!r} has shape {list(shape)}, expected [n_atoms, d]")
    W = _tensor(path, tensors, key, shape, "a decoder", (key,)).numpy()
    b = (_tensor(path, tensors, "b_dec", (shape[1],), "a decoder", (key,)).numpy()
         if "b_dec" in tensors else np.zeros(shape[1], np.float32))
    return DecoderDictionary(
        name=name, path=path, kind="decoder", sha256={path.name: files.sha256_file(path)},
        description=(f"bare decoder {key!r} ({shape[0]} atoms, d = {shape[1]}), rows coded by "
                     f"nonnegative OMP at the stage's k, as the oracle"),
        W_dec=W.astype(np.float32), b_dec=b.astype(np.float32))


def load_external(name: str, path: str | Path) -> SAELensDictionary | DecoderDictionary:
    """The external dictionary at `path` (a SAELens folder or a decoder .safetensors file)."""
    path = Path(path).expanduser()
    if not path.exists():
        _fail(path, "not found (expected a SAELens folder or a .safetensors decoder)")
    if path.is_dir():
        return read_saelens(name, path)
    return read_decoder(name, path)


def check_width(ext, d: int, instance_id: str) -> None:
    """Refuse an external dictionary whose width is not the instance's d."""
    if ext.d != d:
        where = (ext.path / files.SAELENS_WEIGHTS_FILE) if ext.kind == "saelens" else ext.path
        _fail(where, f"its atoms have d = {ext.d}, but instance {instance_id} of this run has "
                     f"d = {d} (choose instances of that width with --instance)")
